// A kubelet device plugin that offers /dev/fuse to pods as the extended resource
// mirrord-net/fuse, so that an unprivileged pod (an agent-pool worker) can mount FUSE file
// systems: container runtimes allow /dev/net/tun by default but not /dev/fuse, and a device
// the kubelet allocates is both created in the container and allowed by its device cgroup.
//
// The device can be shared, so the plugin offers a fixed number of slots that all map to the
// one /dev/fuse. It registers with the kubelet again whenever the kubelet's socket is
// re-created (a kubelet restart forgets its plugins). Built from the vendored Kubernetes tree
// by tests/k8s/cluster.sh and run beside the kubelet; a real cluster would run a maintained
// plugin instead (docs/kubernetes.md, "An agent-pool worker pod").
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

const (
	resourceName  = "mirrord-net/fuse"
	endpoint      = "mirrord-net-fuse.sock"
	containerPath = "/dev/fuse"
	slots         = 32
)

// The node's FUSE device the containers get: the plugin's one argument.
type plugin struct{ hostPath string }

func (plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

func (plugin) ListAndWatch(_ *pluginapi.Empty, stream pluginapi.DevicePlugin_ListAndWatchServer) error {
	devices := make([]*pluginapi.Device, slots)
	for i := range devices {
		devices[i] = &pluginapi.Device{ID: fmt.Sprintf("fuse-%d", i), Health: pluginapi.Healthy}
	}
	if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: devices}); err != nil {
		return err
	}
	// The list never changes: hold the stream until the kubelet closes it.
	<-stream.Context().Done()
	return nil
}

func (plugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return &pluginapi.PreferredAllocationResponse{}, nil
}

func (p plugin) Allocate(_ context.Context, request *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	response := &pluginapi.AllocateResponse{}
	for range request.ContainerRequests {
		response.ContainerResponses = append(response.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Devices: []*pluginapi.DeviceSpec{{
				ContainerPath: containerPath,
				HostPath:      p.hostPath,
				Permissions:   "rw",
			}},
		})
	}
	return response, nil
}

func (plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	return (&net.Dialer{}).DialContext(ctx, "unix", path)
}

func register() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, pluginapi.KubeletSocket, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithContextDialer(dialUnix))
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     endpoint,
		ResourceName: resourceName,
	})
	return err
}

// inode of path, or 0 when it does not exist.
func inode(path string) uint64 {
	info, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return info.Sys().(*syscall.Stat_t).Ino
}

func main() {
	if len(os.Args) != 2 {
		log.Fatalf("usage: %s FUSE-DEVICE-NODE", os.Args[0])
	}
	hostPath := os.Args[1]
	if info, err := os.Stat(hostPath); err != nil || info.Mode()&os.ModeCharDevice == 0 {
		log.Fatalf("%s is not a character device (%v)", hostPath, err)
	}
	socket := filepath.Join(pluginapi.DevicePluginPath, endpoint)
	var registered uint64
	var server *grpc.Server
	for {
		kubelet := inode(pluginapi.KubeletSocket)
		if kubelet != 0 && (kubelet != registered || inode(socket) == 0) {
			// A new kubelet removes every socket in its directory: serve on a fresh one.
			if server != nil {
				server.Stop()
			}
			os.Remove(socket)
			listener, err := net.Listen("unix", socket)
			if err != nil {
				log.Fatalf("listen %s: %v", socket, err)
			}
			server = grpc.NewServer()
			pluginapi.RegisterDevicePluginServer(server, plugin{hostPath: hostPath})
			go server.Serve(listener)
			if err := register(); err != nil {
				log.Printf("registering with the kubelet: %v (retrying)", err)
			} else {
				log.Printf("registered %s (%d slots of %s)", resourceName, slots, hostPath)
				registered = kubelet
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
}
