#!/bin/sh
# A torch.distributed-style job without torch: every rank reads MASTER_ADDR,
# MASTER_PORT, RANK, WORLD_SIZE and LOCAL_RANK (as torchrun would set them),
# rank 0 listens on MASTER_ADDR:MASTER_PORT (a TCP rendezvous, like
# torch.distributed's TCPStore), every other rank connects and sends its
# value, and rank 0 sends the sum back: an all-reduce over plain sockets.
#   launcher run -l examples/torch-style-sum.sh
#LAUNCHER -N 2 -n 4 --name torch-style-sum
#EXPECT exit=0 lines=4
#REQUIRES python3
exec python3 - <<'PY'
import os, socket, time

addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
local_rank = int(os.environ["LOCAL_RANK"])
value = rank + 1  # what this rank contributes

def recv_line(conn):
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(64)
        if not chunk:
            raise SystemExit(f"rank {rank}: peer closed the connection")
        data += chunk
    return data.decode().strip()

if rank == 0:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(world)
    srv.settimeout(60)
    peers, total = [], value
    while len(peers) < world - 1:
        conn, _ = srv.accept()
        total += int(recv_line(conn).split()[1])
        peers.append(conn)
    for conn in peers:
        conn.sendall(f"{total}\n".encode())
        conn.close()
else:
    deadline = time.time() + 60
    while True:  # rank 0 may not be listening yet
        try:
            conn = socket.create_connection((addr, port), timeout=5)
            break
        except OSError:
            if time.time() > deadline:
                raise SystemExit(f"rank {rank}: no rendezvous at {addr}:{port}")
            time.sleep(0.1)
    conn.sendall(f"{rank} {value}\n".encode())
    total = int(recv_line(conn))

assert total == world * (world + 1) // 2, total
print(f"rank {rank}/{world} (local rank {local_rank}) on {socket.gethostname()}: sum {total}")
PY
