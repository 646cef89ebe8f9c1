import socket, sys, time, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
port=int(sys.argv[1]); n=int(sys.argv[2]); secs=float(sys.argv[3])
socks=[]
for i in range(n):
    s=socket.socket(); s.connect(('127.0.0.1',port)); socks.append(s)
print("holding", len(socks), flush=True)
end=time.time()+secs
while time.time()<end:
    pass  # silent: a valid-looking client that never sends its ClientHello
    time.sleep(1)
alive=0
for s in socks:
    s.setblocking(False)
    try:
        d=s.recv(1)
        if d: alive+=1
    except BlockingIOError: alive+=1
    except OSError: pass
print("still open", alive, flush=True)
