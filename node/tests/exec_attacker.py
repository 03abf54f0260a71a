"""The attacker of node/tests/workload_api.rs (exec after connect): a process connects to the
Workload API and then runs another program, while the connection is used to ask for an SVID.

The Rust test speaks gRPC; this script only holds connections and relays bytes between the
Workload API connection and a relay socket the test connects to. Modes (argv[1]):

  exec AGENT RELAY EXE      connect to AGENT, wait until the agent answers on the connection
                            (it has taken the connection's process pin), print "connected",
                            then exec EXE (a copy of this interpreter) running "relay" on the
                            inherited connection: the process that asks is the new program.
  fork AGENT RELAY EXE      connect to AGENT, wait as above, fork: the child relays (it is the
                            untrusted program), the parent prints "connected", waits for a line
                            on stdin, then execs EXE running "sleep".
  direct AGENT RELAY        connect to AGENT and relay: the honest control.
  relay FD RELAY            relay between the inherited connection FD and RELAY.
  sleep                     sleep (until killed).

Every line printed is flushed at once; the test reads them.
"""

import os
import socket
import sys
import threading
import time


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def connect(agent):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(agent)
    # The agent writes nothing (not even its HTTP/2 SETTINGS) before it has pinned the
    # connection's process: a peeked byte proves the pin was taken, and stays for the client.
    s.recv(1, socket.MSG_PEEK)
    return s


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for sock in (src, dst):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def relay(conn, relay_path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(relay_path)
    listener.listen(1)
    say("ready")
    client, _ = listener.accept()
    up = threading.Thread(target=pump, args=(client, conn), daemon=True)
    up.start()
    pump(conn, client)
    up.join(timeout=5)


def main():
    mode = sys.argv[1]
    if mode == "exec":
        agent, relay_path, exe = sys.argv[2:5]
        s = connect(agent)
        s.set_inheritable(True)
        say("connected")
        os.execv(exe, [exe, __file__, "relay", str(s.fileno()), relay_path])
    elif mode == "fork":
        agent, relay_path, exe = sys.argv[2:5]
        s = connect(agent)
        if os.fork() == 0:
            relay(s, relay_path)
            os._exit(0)
        say("connected")
        sys.stdin.readline()
        os.execv(exe, [exe, __file__, "sleep"])
    elif mode == "direct":
        agent, relay_path = sys.argv[2:4]
        relay(connect(agent), relay_path)
    elif mode == "relay":
        fd, relay_path = sys.argv[2:4]
        relay(socket.socket(fileno=int(fd)), relay_path)
    elif mode == "sleep":
        time.sleep(600)
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
