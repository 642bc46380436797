#!/usr/bin/env python3
"""End-to-end failover time: from the fault to every watcher seeing the new primary.

Runs a local 3-process cluster (release binary), one watcher per node, agents per region, and
injects two faults, several rounds each:

  health   the holder region's health endpoint starts answering 503 (its agent keeps running
           and acknowledges the demotion, as a healthy agent behind a failing service would)
  expiry   the holder region's agent is killed with SIGKILL (no ack: the lease must run out)

Usage: cluster/measure-failover.py [--rounds 5] [--ttl 2s] [--bin target/release/baton]
Prints each round and the median/max per fault. Asserts nothing.
"""
import argparse, http.server, json, os, signal, socketserver, statistics, subprocess, sys, tempfile, threading, time

REGIONS = ["us-east", "eu-west", "ap-south"]

class Health(http.server.BaseHTTPRequestHandler):
    healthy = {}
    def do_GET(self):
        region = self.server.region
        code = 200 if Health.healthy.get(region, True) else 503
        self.send_response(code); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass

def serve_health(region):
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Health)
    srv.region = region
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ttl", default="2s")
    ap.add_argument("--bin", default="target/release/baton")
    ap.add_argument("--base-port", type=int, default=7801)
    args = ap.parse_args()
    binp = os.path.abspath(args.bin)
    d = tempfile.mkdtemp(prefix="baton-measure-")
    ports = [args.base_port + i for i in range(3)]
    eps = ",".join(f"127.0.0.1:{p}" for p in ports)
    hports = {r: serve_health(r) for r in REGIONS}
    peers = "".join(f'[[peers]]\nid = {i+1}\naddr = "127.0.0.1:{p}"\nregion = "{REGIONS[i]}"\n' for i, p in enumerate(ports))
    health = "".join(
        f'[services.health.{r}]\nkind = "http"\ntarget = "http://127.0.0.1:{hp}/health"\ninterval = "200ms"\ntimeout = "150ms"\nthreshold = 2\n'
        for r, hp in hports.items())
    svc = (f'[[services]]\nname = "payments"\nregions = {json.dumps(REGIONS)}\nlease_ttl = "{args.ttl}"\n'
           f'cooldown = "0s"\nflap_limit = 0\n{health}')
    nodes = []
    for i, p in enumerate(ports):
        cfg = os.path.join(d, f"node{i+1}.toml")
        with open(cfg, "w") as f:
            f.write(f'cluster = "measure"\nid = {i+1}\nregion = "{REGIONS[i]}"\nlisten = "127.0.0.1:{p}"\n'
                    f'data_dir = "{d}/data{i+1}"\n[timing]\nheartbeat = "50ms"\nelection_timeout_min = "300ms"\n'
                    f'election_timeout_max = "600ms"\n{peers}\n{svc}')
        nodes.append(subprocess.Popen([binp, "server", "--config", cfg], stdout=subprocess.DEVNULL,
                                      stderr=open(os.path.join(d, f"node{i+1}.log"), "w")))
    agents = {}
    def start_agent(r):
        agents[r] = subprocess.Popen([binp, "--endpoints", eps, "agent", "--service", "payments", "--region", r,
                                      "--agent-id", f"a-{r}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    events = []  # (monotonic time, watcher, region, token)
    lock = threading.Lock()
    def watch(i):
        p = subprocess.Popen([binp, "--endpoints", f"127.0.0.1:{ports[i]}", "-w", "json", "watch", "payments"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in p.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            text = json.dumps(ev)
            if "granted" in text.lower():
                region = next((r for r in REGIONS if r in text), None)
                with lock:
                    events.append((time.monotonic(), i, region))
    def primary():
        out = subprocess.run([binp, "--endpoints", eps, "-w", "json", "primary", "payments"], capture_output=True, text=True)
        try:
            v = json.loads(out.stdout)
        except ValueError:
            return None
        t = json.dumps(v)
        return next((r for r in REGIONS if f'"{r}"' in t), None) if '"held"' in t.lower() else None
    try:
        time.sleep(2)
        for r in REGIONS: start_agent(r)
        for i in range(3): threading.Thread(target=watch, args=(i,), daemon=True).start()
        time.sleep(2)
        results = {"health": [], "expiry": []}
        for rnd in range(args.rounds):
            for fault in ("health", "expiry"):
                holder = None
                while holder is None:
                    holder = primary(); time.sleep(0.1)
                time.sleep(1.5)
                with lock: events.clear()
                t0 = time.monotonic()
                if fault == "health":
                    Health.healthy[holder] = False
                else:
                    agents[holder].send_signal(signal.SIGKILL); agents[holder].wait()
                seen = {}
                deadline = t0 + 60
                while len(seen) < 3 and time.monotonic() < deadline:
                    with lock:
                        for (t, w, region) in events:
                            if region and region != holder and w not in seen:
                                seen[w] = t - t0
                    time.sleep(0.005)
                worst = max(seen.values()) if len(seen) == 3 else float("nan")
                results[fault].append(worst)
                print(f"round {rnd+1} {fault:6s} from {holder:8s}: all 3 watchers saw the new primary after {worst*1000:7.0f} ms", flush=True)
                # Repair: region healthy again, agent back.
                Health.healthy[holder] = True
                if fault == "expiry": start_agent(holder)
                time.sleep(1.0)
        print()
        for fault, v in results.items():
            ok = [x for x in v if x == x]
            if ok:
                print(f"{fault:6s}: median {statistics.median(ok)*1000:.0f} ms, max {max(ok)*1000:.0f} ms over {len(ok)} rounds (lease TTL {args.ttl}, probes 200ms x2, heartbeat 50ms)")
    finally:
        for p in list(agents.values()) + nodes:
            p.kill()

if __name__ == "__main__":
    main()
