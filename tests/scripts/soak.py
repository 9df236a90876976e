"""Soak and noise runs against real `emberd` and `ember` processes (the README's "Soak and noise").

Usage (after `cargo build --release`), from anywhere:

    python3 tests/scripts/soak.py conversation 1000
    python3 tests/scripts/soak.py cycles 1000
    python3 tests/scripts/soak.py noisy 200 --corrupt-every 10000 --drop-every 10000 [--both-ways]

Prints one JSON line of figures. Works in $EMBER_SOAK_DIR (default /tmp/ember-soak): the tiny
synthetic model (`ember synth --seed 42`, quantized), logs. The same scenarios run in Rust in
tests/soak.rs (short versions in `cargo test`, full ones with `-- --ignored`).
"""
import os, sys, subprocess, time, json, select, signal, re
B = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "target", "release")
D = os.environ.get("EMBER_SOAK_DIR", "/tmp/ember-soak")
os.makedirs(D, exist_ok=True)
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("RssAnon:"): return int(l.split()[1])
def slope(samples, total):
    s = [x for x in samples if x[0] >= total/10]
    n = len(s); mx = sum(a for a,_ in s)/n; my = sum(b for _,b in s)/n
    sxx = sum((a-mx)**2 for a,_ in s); sxy = sum((a-mx)*(b-my) for a,b in s)
    return 100*sxy/sxx if sxx else 0.0
MESSAGES = ["Hi there!","What is the weather like?","Tell me a story about a dragon.","And tomorrow?",
  "Why is the sky blue? Answer in one sentence, please.","Count to five.","What did I ask first?","Thanks!"]
DEVICE = ["--context","160","--max-tokens","24","--threads","2"]
def image():
    img = f"{D}/tiny.ember"
    if not os.path.exists(img):
        subprocess.run([f"{B}/ember","synth","-o",f"{D}/tiny.gguf","--seed","42"],check=True,stdout=subprocess.DEVNULL)
        subprocess.run([f"{B}/ember","quantize",f"{D}/tiny.gguf","-o",img,"--quiet"],check=True,stdout=subprocess.DEVNULL)
    return img
def emberd_pty():
    p = subprocess.Popen([f"{B}/emberd","--model",image(),"--pty"]+DEVICE, stdout=subprocess.PIPE, stderr=open(f"{D}/emberd.log","w"))
    path = p.stdout.readline().decode().strip()
    return p, path
def conversation(turns):
    d, port = emberd_pty()
    t0 = time.time()
    chat = subprocess.Popen([f"{B}/ember","chat","--port",port,"--json","-n","24","--temperature","0.8","--top-k","40"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(f"{D}/chat.err","w"))
    samples=[(0,rss(d.pid))]; replies=[]
    every=max(turns//50,1)
    for t in range(turns):
        chat.stdin.write((MESSAGES[t%len(MESSAGES)]+"\n").encode()); chat.stdin.flush()
        while True:
            line = chat.stdout.readline()
            if not line: break
            try: r=json.loads(line); replies.append(r); break
            except Exception: pass
        if not line: break
        if (t+1)%every==0: samples.append((t+1,rss(d.pid)))
    chat.stdin.close(); rc=chat.wait()
    wall=time.time()-t0
    fin={}
    for r in replies: fin[r["finish"]]=fin.get(r["finish"],0)+1
    dropped=sum(r["stats"]["turns_dropped"] for r in replies)
    failures=[r for r in replies if r["finish"] not in ("eos","length","stop") or r["errors"]]
    d.kill(); d.wait()
    open(f"{D}/samples-conv-{turns}.txt","w").write("\n".join(f"{a} {b}" for a,b in samples))
    print(json.dumps(dict(kind="conversation",turns=turns,replies=len(replies),exit=rc,failures=len(failures),
        resent=sum(r.get("resent",0) for r in replies),turns_dropped=dropped,finishes=fin,
        rss_start=samples[0][1],rss_end=samples[-1][1],rss_min=min(b for _,b in samples),rss_max=max(b for _,b in samples),
        slope_kb_per_100=round(slope(samples,turns),2),wall_s=round(wall,1))),flush=True)
HELLO = bytes.fromhex("00010101 0603a68e 4db800".replace(" ",""))
def cycles(n):
    d, port = emberd_pty()
    t0=time.time(); samples=[(0,rss(d.pid))]; failures=[]; kinds={}
    every=max(n//50,1)
    for c in range(n):
        k = c%4
        try:
            if k in (0,2):
                # greet by hand and close without a word
                fd=os.open(port, os.O_RDWR|os.O_NOCTTY)
                import termios, tty as ttym
                ttym.setraw(fd)
                os.write(fd,HELLO)
                got=b""; end=time.time()+5
                while time.time()<end and got.count(b"\x00")<2:
                    r,_,_=select.select([fd],[],[],0.5)
                    if r: got+=os.read(fd,4096)
                os.close(fd)
                if got.count(b"\x00")<2: failures.append((c,"no hello",got[:40]))
                kinds["greet+close"]=kinds.get("greet+close",0)+1
            elif k==1:
                r=subprocess.run([f"{B}/ember","ask","--port",port,"--json","--temperature","0.8","--seed",str(c),MESSAGES[c%8]],capture_output=True,timeout=60)
                if r.returncode!=0: failures.append((c,"ask",r.stderr[-200:]))
                else:
                    j=json.loads(r.stdout.decode().strip().splitlines()[-1])
                    if j["finish"] not in ("eos","length","stop"): failures.append((c,"finish",j["finish"]))
                kinds["ask+goodbye"]=kinds.get("ask+goodbye",0)+1
            else:
                # ask, killed in the middle of the reply
                p=subprocess.Popen([f"{B}/ember","ask","--port",port,"--temperature","0.8","--seed",str(c),MESSAGES[c%8]],stdout=subprocess.PIPE,stderr=subprocess.DEVNULL)
                r,_,_=select.select([p.stdout],[],[],30)
                if not r: failures.append((c,"no token"))
                p.send_signal(signal.SIGKILL); p.wait()
                kinds["ask killed mid-reply"]=kinds.get("ask killed mid-reply",0)+1
        except Exception as e:
            failures.append((c,repr(e)))
        if (c+1)%every==0: samples.append((c+1,rss(d.pid)))
    # still answers
    r=subprocess.run([f"{B}/ember","ask","--port",port,"--json","Hi there!"],capture_output=True,timeout=60)
    alive = r.returncode==0
    wall=time.time()-t0
    d.kill(); d.wait()
    print(json.dumps(dict(kind="cycles",cycles=n,kinds=kinds,failures=len(failures),first_failures=[repr(f) for f in failures[:5]],answers_after=alive,
        rss_start=samples[0][1],rss_end=samples[-1][1],rss_min=min(b for _,b in samples),rss_max=max(b for _,b in samples),
        slope_kb_per_100=round(slope(samples,n),2),wall_s=round(wall,1))),flush=True)
def noisy(turns, noise):
    line=subprocess.Popen([f"{B}/ember","line","--baud","115200"]+noise,stdout=subprocess.PIPE,stderr=open(f"{D}/line.log","w"))
    dev=line.stdout.readline().decode().split()[1]; host=line.stdout.readline().decode().split()[1]
    d=subprocess.Popen([f"{B}/emberd","--model",image(),"--port",dev,"--baud","115200"]+DEVICE,stdout=subprocess.DEVNULL,stderr=open(f"{D}/emberd-noisy.log","w"))
    time.sleep(0.5)
    t0=time.time()
    inp="".join(MESSAGES[t%8]+"\n" for t in range(turns))
    r=subprocess.run([f"{B}/ember","chat","--port",host,"--json","-n","24","--temperature","0.8","--silence-ms","1000"],input=inp.encode(),capture_output=True)
    wall=time.time()-t0
    time.sleep(6)
    replies=[]
    for l in r.stdout.decode(errors="replace").splitlines():
        try: replies.append(json.loads(l))
        except Exception: pass
    fin={}
    for x in replies: fin[x["finish"]]=fin.get(x["finish"],0)+1
    d.kill(); d.wait(); line.kill(); line.wait()
    log=open(f"{D}/line.log").read().strip().splitlines()
    err=r.stderr.decode(errors="replace")
    # Replies the device ran (its log says "reply: …" once per reply): each message once.
    ran=open(f"{D}/emberd-noisy.log").read().count("reply:")
    print(json.dumps(dict(kind="noisy",noise=noise,turns=turns,replies=len(replies),device_replies=ran,exit=r.returncode,finishes=fin,
        resent=sum(x.get("resent",0) for x in replies),with_warnings=sum(1 for x in replies if x.get("warnings")),
        device_errors=sum(len(x["errors"]) for x in replies),
        warnings_stderr=err.count("warning:"),stderr_tail=err[-300:] if r.returncode else "",line=log[-1] if log else "",wall_s=round(wall,1))),flush=True)
what=sys.argv[1]; n=int(sys.argv[2])
if what=="conversation": conversation(n)
elif what=="cycles": cycles(n)
elif what=="noisy": noisy(n, sys.argv[3:])
