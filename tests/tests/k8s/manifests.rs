//! The workloads the Kubernetes tests target and reach, as YAML applied in a test's namespace.
//!
//! Images are the cluster's local ones (`imagePullPolicy: Never`): busybox for servers and
//! sleepers, PostgreSQL from tests/k8s/test-images.sh. The cluster has no DNS, so pods use
//! `dnsPolicy: Default` and the tests reach Services by their ClusterIP.

/// Deployment `web` (busybox httpd on 8080 answering `web <pod name>`) and Service `web`
/// (port 80).
pub const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      dnsPolicy: Default
      terminationGracePeriodSeconds: 0
      containers:
      - name: httpd
        image: localhost/busybox:local
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir -p /www && echo \"web $HOSTNAME\" > /www/index.html && exec httpd -f -p 8080 -h /www"]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// Pod `app`, the usual target: a sleeper with an environment variable and a ConfigMap
/// volume at /etc/app.
pub const APP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config}
data:
  config.txt: "mode=cluster\n"
---
apiVersion: v1
kind: Pod
metadata: {name: app, labels: {app: app}}
spec:
  dnsPolicy: Default
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: localhost/busybox:local
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    env: [{name: GREETING, value: hello-from-app}]
    volumeMounts: [{name: config, mountPath: /etc/app}]
  volumes:
  - name: config
    configMap: {name: app-config}
"#;

/// Pod `api`: a main container with an environment variable and a ConfigMap volume at
/// /etc/api, and a sidecar serving HTTP on the pod's loopback only (127.0.0.1:8085, answering
/// `sidecar`), as a mesh proxy or an admin port would.
pub const API: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: api-config}
data:
  config.txt: "mode=api\n"
---
apiVersion: v1
kind: Pod
metadata: {name: api, labels: {app: api}}
spec:
  dnsPolicy: Default
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: localhost/busybox:local
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    env: [{name: GREETING, value: hello-from-api}]
    volumeMounts: [{name: config, mountPath: /etc/api}]
  - name: sidecar
    image: localhost/busybox:local
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www && echo sidecar > /www/index.html && exec httpd -f -p 127.0.0.1:8085 -h /www"]
    readinessProbe: {exec: {command: ["wget", "-qO-", "http://127.0.0.1:8085/"]}, periodSeconds: 1}
  volumes:
  - name: config
    configMap: {name: api-config}
"#;

/// Pod `duo`: two containers that differ in their `ROLE` variable.
pub const DUO: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: duo, labels: {app: duo}}
spec:
  dnsPolicy: Default
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: localhost/busybox:local
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    env: [{name: ROLE, value: main}]
  - name: sidecar
    image: localhost/busybox:local
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    env: [{name: ROLE, value: sidecar}]
"#;

/// Pod `db` (PostgreSQL, trust authentication) and Service `db` (port 5432).
pub const DB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: db, labels: {app: db}}
spec:
  dnsPolicy: Default
  terminationGracePeriodSeconds: 0
  securityContext: {runAsUser: 999, runAsGroup: 999}
  containers:
  - name: postgres
    image: localhost/postgres:local
    imagePullPolicy: Never
    env: [{name: TZ, value: UTC}]
    command:
    - /bin/sh
    - -c
    - >-
      /pgbin/initdb --auth=trust --no-sync --no-instructions --encoding=UTF8 --locale=C
      --username=postgres -D /tmp/db > /tmp/initdb.log 2>&1 || { cat /tmp/initdb.log; exit 1; };
      echo 'host all all 0.0.0.0/0 trust' >> /tmp/db/pg_hba.conf;
      exec /pgbin/postgres -D /tmp/db -c listen_addresses=* -c fsync=off
      -c unix_socket_directories=/tmp
    readinessProbe: {tcpSocket: {port: 5432}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  selector: {app: db}
  ports: [{port: 5432}]
"#;

/// Deployment `echo` (tests/scripts/tagged_httpd.py on 8080 answering `v1 CLIENT_ADDRESS`, from
/// the ConfigMap `echo-scripts` the test creates from the file) and Service `echo` (port 80).
pub const ECHO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      dnsPolicy: Default
      terminationGracePeriodSeconds: 0
      containers:
      - name: echo
        image: localhost/python:local
        imagePullPolicy: Never
        command: ["python3", "-u", "/scripts/tagged_httpd.py", "8080", "v1"]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
        volumeMounts: [{name: scripts, mountPath: /scripts}]
      volumes:
      - name: scripts
        configMap: {name: echo-scripts}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
"#;
