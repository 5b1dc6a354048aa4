#!/usr/bin/env python3
"""Drives an interactive shell on a real pseudo-terminal, as a user at a keyboard would.

Usage: interactive_shell.py HOSTNAME COMMAND [ARGS...]

COMMAND (e.g. `mirrord-net shell --target pid/N`) runs as the session leader of a new pty,
which is its controlling terminal. The script types into the terminal and waits for what the
shell prints. Every check types a command whose output differs from its echo (`$((1+1))`), so
the echo of the typed line never counts as the answer. Checks, in order:

1. the shell starts and its hostname is HOSTNAME;
2. line editing: a backspace typed in the middle of a line is applied;
3. ^C at the prompt interrupts only the line being typed: the shell (and mirrord-net) go on;
4. job control: ^Z stops a foreground `sleep`, `jobs` lists it as stopped, `fg` resumes it, and
   ^C then kills it: `$?` is 130 (128 + SIGINT);
5. `exit 3` ends the shell, and COMMAND exits with 3.

Prints `OK` on success. On failure exits 1 after printing what failed and everything the
terminal showed.
"""

import os
import pty
import re
import select
import sys
import time

TIMEOUT = 30.0


class Terminal:
    def __init__(self, argv):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                os.execvp(argv[0], argv)
            finally:
                os._exit(127)
        self.seen = b""
        self.mark = 0

    def type(self, text):
        os.write(self.fd, text.encode())

    def expect(self, pattern, what):
        """Waits until `pattern` shows up after everything matched so far."""
        regex = re.compile(pattern.encode())
        deadline = time.monotonic() + TIMEOUT
        while True:
            found = regex.search(self.seen, self.mark)
            if found:
                self.mark = found.end()
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                fail(self, f"timed out waiting for {what} ({pattern!r})")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # EIO: every process on the terminal has closed it
                    chunk = b""
                if not chunk:
                    fail(self, f"the terminal closed while waiting for {what}")
                self.seen += chunk

    def settle(self, quiet=0.3):
        """Reads until the terminal has been quiet for `quiet` seconds.

        After ^C the terminal driver flushes its input queue and readline starts over: keys
        typed before the new prompt is drawn would be lost, as they would be at a keyboard."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], quiet)
            if not ready:
                return
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                return
            self.seen += chunk
        fail(self, "the terminal never went quiet")

    def wait_exit(self):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            # Keep reading, so a process blocked writing to the terminal can finish.
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        fail(self, "the command did not exit after `exit 3`")


def fail(terminal, message):
    print(f"FAILED: {message}")
    print("---- the terminal showed ----")
    print(terminal.seen.decode(errors="replace"))
    try:
        os.kill(terminal.pid, 9)
    except ProcessLookupError:
        pass
    sys.exit(1)


def main():
    hostname, argv = sys.argv[1], sys.argv[2:]
    term = Terminal(argv)

    term.type("echo READY-$((40+2))\n")
    term.expect(r"READY-42", "the shell to start")

    term.type("echo HOST-$(hostname)-$((1+1))\n")
    term.expect(rf"HOST-{re.escape(hostname)}-2", "the target's hostname")

    # "EDIT-ab", backspace, "c": readline applies the edit before the shell sees the line.
    term.type("echo EDIT-ab\x7fc-$((2+2))\n")
    term.expect(r"EDIT-ac-4", "the edited line")

    # ^C on a half-typed line discards it; the shell and the session stay.
    term.type("echo NEVER-RUN")
    time.sleep(0.3)
    term.type("\x03")
    term.settle()
    term.type("echo ALIVE-$((3+3))\n")
    term.expect(r"ALIVE-6", "the shell to survive ^C at the prompt")
    if b"NEVER-RUN-" in term.seen:
        fail(term, "the interrupted line ran")

    term.type("sleep 300\n")
    time.sleep(0.5)
    term.type("\x1a")
    term.expect(r"Stopped", "^Z to stop the foreground job")
    term.settle()
    term.type("jobs; echo JOBS-$((4+4))\n")
    term.expect(r"sleep 300[\s\S]*JOBS-8", "jobs to list the stopped sleep")
    term.type("fg\n")
    term.expect(r"sleep 300", "fg to resume the sleep")
    time.sleep(0.5)
    term.type("\x03")
    term.settle()
    term.type("echo RC-$?-$((5+5))\n")
    term.expect(r"RC-130-10", "^C to kill the resumed job (status 130)")

    term.type("exit 3\n")
    code = term.wait_exit()
    if code != 3:
        fail(term, f"the command exited with {code}, not 3")
    print("OK")


if __name__ == "__main__":
    main()
