package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/p2p"
	ct "github.com/e2em/e2em/internal/clustertest"
	"github.com/e2em/e2em/internal/loadgen"
)

// manyOnlineSteps are the crowd sizes measured; E2EM_MANY_ONLINE (e.g.
// "1000,2500") chooses others.
var manyOnlineSteps = []int{1000, 2500, 5000, 10000}

// BenchmarkManyOnline grows a crowd of simulated people (internal/loadgen:
// each its own TLS connection through the balancer from its own loopback
// address, a real log-in, real keys in the directory, an Events stream
// held open, mail fetched and acknowledged, and a libp2p host with
// reservations on two relays) on the 3-coordinator cluster, and at each
// size measures what every person costs: live memory and goroutines on
// the coordinators (gRPC alone, then with the relay reservations), the
// balancer's descriptors, the burst of that step's fresh log-ins, relay
// reachability of everyone, PutMail→Event latency and LookUp/s — the last
// two beside the same with nobody online. At the largest size everyone's
// connection drops and comes back at once on the session it holds (a
// reconnect storm), with the LogIn calls it cost counted.
func BenchmarkManyOnline(b *testing.B) {
	steps := manyOnlineSteps
	if s := os.Getenv("E2EM_MANY_ONLINE"); s != "" {
		steps = nil
		for f := range strings.SplitSeq(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				b.Fatalf("E2EM_MANY_ONLINE=%q: %q is not a size", s, f)
			}
			steps = append(steps, n)
		}
	}
	largest := slices.Max(steps)
	// Three descriptors a person here (its gRPC connection, two relay
	// connections), two on the balancer, one or two on a coordinator:
	// raise the limit for this process and the cluster it starts. Where
	// it cannot be raised enough, people past it go to crowd workers.
	got := raiseFileLimit(uint64(4*largest + 4096))
	// A balancer here holds (limit - 1,024) / 2 people, and a reconnect
	// storm briefly needs twice its people's connections (the old ones
	// are torn down while the new ones arrive), plus the benchmark's own:
	// each balancer, and so each process's share, is kept to a fifth.
	workerCap := int(got-1024) / 5
	localCap := workerCap
	// E2EM_MANY_ONLINE_LOCAL caps this process's share: the rest go to
	// workers, whose CPU can be told apart (and paused, see lookUpRate).
	if v, err := strconv.Atoi(os.Getenv("E2EM_MANY_ONLINE_LOCAL")); err == nil && v > 0 {
		localCap = min(localCap, v)
	}
	if localCap < largest {
		report("descriptors limited to %d here: up to %d people in this process, the rest in crowd workers of up to %d behind balancers of their own", got, localCap, workerCap)
	}
	for i := 0; i < b.N; i++ {
		manyOnline(b, steps, largest, localCap, workerCap)
	}
}

func manyOnline(b *testing.B, steps []int, largest, localCap, workerCap int) {
	c := ct.Start(b, ct.Options{N: 3, CoordArgs: []string{"-log-level", "warn",
		// Everyone here is on 127.x: the per-IP limits stand for a huge NAT.
		"-relay-max-conns-per-ip", fmt.Sprint(2 * largest), "-relay-max-reservations-per-ip", fmt.Sprint(2 * largest)},
		LBArgs: []string{"-max-conns", fmt.Sprint(largest + 1024)}})
	bg := context.Background()
	relays, err := loadgen.RelayInfos(bg, c.LB())
	if err != nil {
		b.Fatal(err)
	}
	crowd := &loadgen.Crowd{LB: c.Layout.LB, CAFile: c.CAFile()}
	latencies := newMailClock()
	crowd.OnMail(latencies.seen)
	// A few people beside the crowd: the "nobody online" baseline mails
	// between them, and one is the prober (it reaches everyone through
	// their relays; the relays join directory devices only).
	few := crowd.Add(largest, largest+20)
	if _, err := loadgen.Online(bg, few, relays, 20); err != nil {
		b.Fatal(err)
	}
	prober := few[0]
	lookups := make([]api.CoordinatorClient, 64)
	for i := range lookups {
		lookups[i] = api.NewCoordinatorClient(c.NewConn(c.Layout.LB))
	}
	// The median of three 3 s runs (this machine's speed drifts), from
	// h2load where it is installed: a process of its own, which neither
	// competes with the crowd's heap for this process's garbage collector
	// nor is slowed by it; else from grpc-go clients here.
	//
	// The crowd stands for thousands of machines but runs on this one's
	// two cores. With paused workers, each run stops the workers'
	// processes for its 4 s (their connections and reservations stay
	// open; a relay's keepalive waits 10 s for an answer), so the rate is
	// that of the cluster holding everyone without the simulated clients'
	// own CPU beside it.
	lookUpRate := func(phase string, paused []*worker) float64 {
		var rates []float64
		for i := range 3 {
			if i == 1 {
				stop := profile(b, c, phase)
				defer stop()
			}
			req := &api.LookUpRequest{Query: few[1].Login}
			resume := pauseWorkers(b, paused)
			rate, _ := h2loadCalls(b, c, prober.Token(), len(lookups), 3*time.Second, "LookUp", req)
			resume()
			if rate == 0 {
				authed := prober.Authed(bg)
				var errs int
				rate, _, _, errs = load(len(lookups), 3*time.Second, func(w int) error {
					_, err := lookups[w].LookUp(authed, req)
					return err
				})
				if errs > 0 {
					report("%d lookups failed", errs)
				}
			}
			rates = append(rates, rate)
		}
		return median(rates)
	}
	baseDone := measureCPU(c)
	baseLookUps := lookUpRate("lookup-none", nil)
	report("  cores during LookUp, nobody online: %v", baseDone())
	baseP50, baseP99 := latencies.measure(b, few, 200)
	base := snapshot(b, c)
	report("nobody online: %.0f LookUp/s; PutMail→Event p50 %v p99 %v; coordinators %.1f MB live, %d goroutines; balancer %d descriptors",
		baseLookUps, baseP50, baseP99, base.live/1e6, base.goroutines, base.lbFDs)

	var people []*loadgen.Person
	defer func() {
		loadgen.Each(append(people, few...), 256, func(p *loadgen.Person) error { p.Close(); return nil })
	}()
	type row struct {
		n                    int
		grpc, full           cost
		loginBurst, reach    time.Duration
		burstOf              int
		p50, p99             time.Duration
		lookUps              float64
		lookUpsPaused        float64 // with the crowd's workers paused
		share                map[string]int
		unreached, unreserve int
		// Where the cores go while everyone just stays online, and
		// while LookUp is measured.
		idle, lookUpCPU cpuSplit
	}
	var rows []row
	// People past what this process's descriptors hold go to crowd
	// workers (crowdworker_test.go), each behind a balancer of its own.
	var workers []*worker
	var lbs []string
	total := len(people)
	relayAddrs := relayMultiaddrs(relays)
	for _, n := range steps {
		r := row{n: n, burstOf: n - total}
		local := min(n-total, max(localCap-len(people), 0))
		fresh := crowd.Add(total, total+local)
		// gRPC first (sign-up, the log-in burst, keys, Events), then the
		// relay reservations, so each part's cost shows.
		crowd.Relays = -1
		if r.loginBurst, err = loadgen.Online(bg, fresh, relays, 64); err != nil {
			b.Fatal(err)
		}
		people = append(people, fresh...)
		var stepWorkers []*worker
		for from := total + local; from < n; from += workerCap {
			w, rep := startWorker(b, c, relayAddrs, from, min(from+workerCap, n))
			stepWorkers = append(stepWorkers, w)
			workers = append(workers, w)
			lbs = append(lbs, w.lbMetrics)
			r.loginBurst = max(r.loginBurst, time.Duration(rep.LogInsMS)*time.Millisecond)
		}
		total = n
		r.grpc = snapshot(b, c, lbs...)
		crowd.Relays = 0
		for _, w := range stepWorkers {
			w.tell(b, "hosts")
		}
		if err := loadgen.FirstError(loadgen.Each(fresh, 64, func(p *loadgen.Person) error { return p.StartHost(relays) })); err != nil {
			b.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(bg, 2*time.Minute)
		r.unreserve = loadgen.WaitReserved(wctx, people, p2p.RelaysPerPeer)
		cancel()
		remote := map[string][]string{}
		for _, w := range stepWorkers {
			rep := w.next(b, "ready")
			r.unreserve += rep.Missing
			maps.Copy(remote, rep.Circuits)
		}
		r.full = snapshot(b, c, lbs...)
		saveProfiles(b, c, fmt.Sprintf("online%d", n))
		r.share = loadgen.RelayShare(people)
		start := time.Now()
		lost, first := loadgen.Reachable(bg, prober, people, 64)
		r.unreached = len(lost)
		if len(remote) > 0 {
			k, err := loadgen.ReachableCircuits(bg, prober, remote, 64)
			r.unreached += k
			if first == nil {
				first = err
			}
		}
		r.reach = time.Since(start)
		if first != nil {
			report("%d unreachable: %v", r.unreached, first)
		}
		r.p50, r.p99 = latencies.measure(b, people, 200)
		r.idle = idleCPU(c, 10*time.Second)
		done := measureCPU(c)
		r.lookUps = lookUpRate(fmt.Sprintf("lookup-%d", n), nil)
		r.lookUpCPU = done()
		if len(workers) > 0 {
			done := measureCPU(c)
			r.lookUpsPaused = lookUpRate(fmt.Sprintf("lookup-%d-paused", n), workers)
			report("  cores during LookUp with the workers paused: %v", done())
		}
		rows = append(rows, r)
		report("%d online (%d in workers): log-in burst of %d in %v; reachable all but %d in %v; PutMail→Event p50 %v p99 %v; %.0f LookUp/s (%.2f× none online); reservations here %v; without reservation %d",
			n, n-len(people), r.burstOf, r.loginBurst.Round(time.Millisecond), r.unreached, r.reach.Round(time.Millisecond), r.p50, r.p99, r.lookUps, r.lookUps/baseLookUps, r.share, r.unreserve)
		if r.lookUpsPaused > 0 {
			report("  with the workers paused: %.0f LookUp/s (%.2f× none online)", r.lookUpsPaused, r.lookUpsPaused/baseLookUps)
		}
		report("  cores idle online: %v (this process %.0f MB resident)", r.idle, selfRSS()/1e6)
		report("  cores during LookUp: %v", r.lookUpCPU)
		report("  coordinators: gRPC only %.1f MB live, %d goroutines; with relays %.1f MB, %d goroutines; balancers %d descriptors",
			r.grpc.live/1e6, r.grpc.goroutines, r.full.live/1e6, r.full.goroutines, r.full.lbFDs)
	}

	// The reconnect storm: every connection drops, and everyone (here and
	// in the workers) comes back at once on the session it holds.
	before := c.LogInCalls()
	loadgen.Each(people, 256, func(p *loadgen.Person) error { p.Disconnect(); return nil })
	for _, w := range workers {
		w.tell(b, "storm")
	}
	stopProfile := profile(b, c, "storm")
	storm, err := loadgen.Reconnect(bg, people)
	stopProfile()
	if err != nil {
		b.Fatal(err)
	}
	for _, w := range workers {
		storm = max(storm, time.Duration(w.next(b, "storm").StormMS)*time.Millisecond)
	}
	hashes := c.LogInCalls() - before
	report("reconnect storm: %d people back on their sessions in %v, %v LogIn calls", total, storm.Round(time.Millisecond), hashes)
	for _, w := range workers {
		w.tell(b, "quit")
		w.cmd.Wait()
	}

	// Nobody online again (the crowd leaves; the few stay): the machine's
	// speed drifts over a run this long, so the ratio is taken against the
	// mean of the rates before the crowd came and after it left.
	loadgen.Each(people, 256, func(p *loadgen.Person) error { p.Close(); return nil })
	people = nil
	afterLookUps := lookUpRate("lookup-after", nil)
	report("nobody online again: %.0f LookUp/s (before the crowd: %.0f)", afterLookUps, baseLookUps)
	baseLookUps = (baseLookUps + afterLookUps) / 2

	// What one more person costs the cluster, summed over its
	// coordinators: its gRPC connection and stream (the growth from the
	// last step's total to this step's gRPC-only snapshot), then its relay
	// reservations (the growth past that), over every step's new people.
	var grpcKB, relayKB, grpcG, relayG float64
	prev := base
	for _, r := range rows {
		grpcKB += r.grpc.live - prev.live
		relayKB += r.full.live - r.grpc.live
		grpcG += float64(r.grpc.goroutines - prev.goroutines)
		relayG += float64(r.full.goroutines - r.grpc.goroutines)
		prev = r.full
	}
	hi := rows[len(rows)-1]
	total = hi.n
	b.ReportMetric(grpcKB/float64(total)/1e3, "grpc-KB/person")
	b.ReportMetric(relayKB/float64(total)/1e3, "relay-KB/person")
	b.ReportMetric(grpcG/float64(total), "grpc-goroutines/person")
	b.ReportMetric(relayG/float64(total), "relay-goroutines/person")
	b.ReportMetric(float64(hi.full.lbFDs-base.lbFDs)/float64(total), "lb-fds/person")
	b.ReportMetric(float64(hi.n), "people")
	b.ReportMetric(float64(hi.unreached+hi.unreserve), "unreachable")
	b.ReportMetric(storm.Seconds(), "storm-s")
	b.ReportMetric(hashes, "storm-logins")
	b.ReportMetric(hi.lookUps/baseLookUps, "lookup-ratio")
	if hi.lookUpsPaused > 0 {
		b.ReportMetric(hi.lookUpsPaused/baseLookUps, "lookup-ratio-workers-paused")
	}
	b.ReportMetric(float64(hi.p50.Microseconds())/1e3, "mail-p50-ms")
	b.ReportMetric(float64(hi.p99.Microseconds())/1e3, "mail-p99-ms")
	// The growth table, as docs/benchmarks.md shows it.
	var t strings.Builder
	fmt.Fprintf(&t, "| online | log-in burst | coord live MB (gRPC / +relays) | coord goroutines (gRPC / +relays) | lb fds | reachable | PutMail→Event p50 / p99 | LookUp/s |\n|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(&t, "| 0 | — | %.1f | %d | %d | — | %v / %v | %.0f |\n", base.live/1e6, base.goroutines, base.lbFDs, baseP50, baseP99, baseLookUps)
	for _, r := range rows {
		paused := ""
		if r.lookUpsPaused > 0 {
			paused = fmt.Sprintf("; workers paused %.0f (%.2f×)", r.lookUpsPaused, r.lookUpsPaused/baseLookUps)
		}
		fmt.Fprintf(&t, "| %d | %d in %.1f s | %.1f / %.1f | %d / %d | %d | %d/%d in %.1f s | %v / %v | %.0f (%.2f×)%s |\n",
			r.n, r.burstOf, r.loginBurst.Seconds(), r.grpc.live/1e6, r.full.live/1e6, r.grpc.goroutines, r.full.goroutines, r.full.lbFDs,
			r.n-r.unreached, r.n, r.reach.Seconds(), r.p50, r.p99, r.lookUps, r.lookUps/baseLookUps, paused)
	}
	report("growth table:\n%s", t.String())
}

// relayMultiaddrs are the relays' addresses, each with /p2p/<id>.
func relayMultiaddrs(relays []peer.AddrInfo) []string {
	var out []string
	for _, ai := range relays {
		for _, a := range ai.Addrs {
			out = append(out, a.String()+"/p2p/"+ai.ID.String())
		}
	}
	return out
}

// report prints a measurement on stdout (benchmark logs are cut short
// past a few lines).
func report(format string, args ...any) {
	fmt.Printf("BenchmarkManyOnline: "+format+"\n", args...)
}

// cost is the cluster's live memory (heap after a forced collection, plus
// stacks) and goroutines summed over the coordinators, and the balancer's
// open descriptors.
type cost struct {
	live       float64
	goroutines int
	lbFDs      int
}

func snapshot(b *testing.B, c *ct.Cluster, moreLBs ...string) cost {
	var s cost
	for _, co := range c.Layout.Coordinators {
		heap, stack, goroutines, err := liveMemory(co.Metrics)
		if err != nil {
			b.Fatalf("%s: %v", co.ID, err)
		}
		s.live += heap + stack
		s.goroutines += goroutines
	}
	for _, lb := range append([]string{c.Layout.LBMetrics}, moreLBs...) {
		m, err := ct.Metrics(lb)
		if err != nil {
			b.Fatal(err)
		}
		for _, mm := range m["process_open_fds"].GetMetric() {
			s.lbFDs += int(mm.GetGauge().GetValue())
		}
	}
	return s
}

// liveMemory forces a collection in a coordinator (the heap profile's
// gc=1) and reads the heap in use and the stacks from the profile's
// MemStats, and the goroutines from its Prometheus metrics.
func liveMemory(metricsAddr string) (heap, stack float64, goroutines int, err error) {
	resp, err := http.Get("http://" + metricsAddr + "/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		return 0, 0, 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "# HeapAlloc = "); ok {
			heap, _ = strconv.ParseFloat(v, 64)
		}
		if v, ok := strings.CutPrefix(line, "# Stack = "); ok {
			f, _, _ := strings.Cut(v, " ")
			stack, _ = strconv.ParseFloat(f, 64)
		}
	}
	if heap == 0 {
		return 0, 0, 0, fmt.Errorf("no HeapAlloc in the heap profile")
	}
	m, err := ct.Metrics(metricsAddr)
	if err != nil {
		return 0, 0, 0, err
	}
	for _, mm := range m["go_goroutines"].GetMetric() {
		goroutines = int(mm.GetGauge().GetValue())
	}
	return heap, stack, goroutines, nil
}

// mailClock times PutMail → the recipient's Events notification.
type mailClock struct {
	mu      sync.Mutex
	sent    map[string]time.Time // to/seq → before PutMail
	arrived map[string]time.Time // to/seq → notification
	done    []time.Duration
}

func newMailClock() *mailClock {
	return &mailClock{sent: map[string]time.Time{}, arrived: map[string]time.Time{}}
}

func (m *mailClock) seen(to string, seq uint64, at time.Time) { m.pair(to, seq, at, m.arrived, m.sent) }

func (m *mailClock) put(to string, seq uint64, t0 time.Time) { m.pair(to, seq, t0, m.sent, m.arrived) }

// pair records one end of a mail's trip (its send or its notification,
// whichever comes first) in mine, or, when the other end is already in
// other, the trip's time.
func (m *mailClock) pair(to string, seq uint64, t time.Time, mine, other map[string]time.Time) {
	k := fmt.Sprintf("%s/%d", to, seq)
	m.mu.Lock()
	defer m.mu.Unlock()
	if u, ok := other[k]; ok {
		m.done = append(m.done, max(t.Sub(u), u.Sub(t)))
		delete(other, k)
		return
	}
	mine[k] = t
}

// measure sends count mails between random people of ps, 8 at a time, and
// returns the p50 and p99 of PutMail → notification.
func (m *mailClock) measure(b *testing.B, ps []*loadgen.Person, count int) (p50, p99 time.Duration) {
	m.mu.Lock()
	m.done = nil
	m.mu.Unlock()
	envelope := make([]byte, 256)
	loadgen.Each(make([]*loadgen.Person, count), 8, func(*loadgen.Person) error {
		from, to := ps[rand.IntN(len(ps))], ps[rand.IntN(len(ps))]
		t0 := time.Now()
		resp, err := from.Client().PutMail(from.Authed(context.Background()), &api.PutMailRequest{To: to.Login, Envelope: envelope})
		if err != nil {
			b.Logf("put mail: %v", err)
			return err
		}
		m.put(to.Login, resp.Seq, t0)
		return nil
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		m.mu.Lock()
		got := len(m.done)
		m.mu.Unlock()
		if got >= count || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.done) < count {
		b.Logf("%d of %d mail notifications arrived", len(m.done), count)
	}
	if len(m.done) == 0 {
		return 0, 0
	}
	d := slices.Clone(m.done)
	slices.Sort(d)
	return d[len(d)/2].Round(10 * time.Microsecond), d[len(d)*99/100].Round(10 * time.Microsecond)
}

// selfRSS is this process's resident memory in bytes (0 if unknown).
func selfRSS() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb * 1e3
		}
	}
	return 0
}

// cpuSplit is the cores each kind of process on this machine used over a
// span, and the cores left idle: where two cores went while the crowd
// was online (the coordinators, the balancers, h2load, the crowd here and
// in its workers, anything else).
type cpuSplit map[string]float64

func (s cpuSplit) String() string {
	keys := slices.Sorted(maps.Keys(s))
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %.2f", k, s[k]))
	}
	return strings.Join(parts, ", ")
}

// cpuTicks are the clock ticks (1/100 s) every process has used, by kind,
// each coordinator's also under "coord <id>" (coords: pid → id), and the
// machine's idle ticks.
func cpuTicks(coords map[int]string) map[string]float64 {
	out := map[string]float64{}
	self := os.Getpid()
	pids, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range pids {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the process ended meanwhile
		}
		// pid (comm) state ppid ... utime(14) stime(15): comm may hold
		// spaces, so fields count from its closing parenthesis.
		lp, rp := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if lp < 0 || rp < lp {
			continue
		}
		fields := strings.Fields(string(b[rp+1:]))
		if len(fields) < 13 {
			continue
		}
		ut, _ := strconv.ParseFloat(fields[11], 64)
		st, _ := strconv.ParseFloat(fields[12], 64)
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b[:lp])))
		kind := string(b[lp+1 : rp])
		switch {
		case pid == self:
			kind = "crowd here"
			// Children that ended and were waited for (each h2load run).
			if len(fields) >= 15 {
				cut, _ := strconv.ParseFloat(fields[13], 64)
				cst, _ := strconv.ParseFloat(fields[14], 64)
				out["h2load"] += cut + cst
			}
		case kind == "bench.test":
			kind = "crowd workers"
		case kind != "coord" && kind != "lb" && kind != "h2load":
			kind = "other"
		}
		out[kind] += ut + st
		if id, ok := coords[pid]; ok {
			out["coord "+id] += ut + st
		}
	}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		// cpu user nice system idle iowait ...
		if f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0]); len(f) > 5 {
			idle, _ := strconv.ParseFloat(f[4], 64)
			iowait, _ := strconv.ParseFloat(f[5], 64)
			out["idle"] = idle + iowait
		}
	}
	return out
}

// measureCPU starts measuring; the function it returns ends the span and
// gives the split in cores.
func measureCPU(c *ct.Cluster) func() cpuSplit {
	c.Refresh()
	coords := map[int]string{}
	for _, co := range c.Layout.Coordinators {
		if pid, ok := c.Layout.PIDs[co.ID]; ok {
			coords[pid] = co.ID
		}
	}
	t0, before := time.Now(), cpuTicks(coords)
	return func() cpuSplit {
		after, el := cpuTicks(coords), time.Since(t0).Seconds()
		out := cpuSplit{}
		for k, v := range after {
			if d := (v - before[k]) / 100 / el; d >= 0.005 {
				out[k] = d
			}
		}
		return out
	}
}

// idleCPU is where the machine's cores go over d while everyone just
// stays online (E2EM_PROFILE: with a CPU profile of one coordinator),
// with each coordinator's own share and the Raft snapshots it took
// meanwhile (a snapshot writes the whole state: it can be most of a
// coordinator's "idle" CPU after a burst of sign-ups).
func idleCPU(c *ct.Cluster, d time.Duration) cpuSplit {
	// A snapshot is written into a directory "….tmp", renamed when done:
	// one new, or in the making at either end, was taken in the span.
	snapshots := func(id string) map[string]bool {
		names := map[string]bool{}
		dirs, _ := filepath.Glob(filepath.Join(c.Dir, id, "snapshots", "*"))
		for _, d := range dirs {
			names[filepath.Base(d)] = true
		}
		return names
	}
	var snapsBefore []map[string]bool
	for _, co := range c.Layout.Coordinators {
		snapsBefore = append(snapsBefore, snapshots(co.ID))
	}
	done := measureCPU(c)
	if dir := os.Getenv("E2EM_PROFILE"); dir != "" {
		co := c.Layout.Coordinators[0]
		out := filepath.Join(dir, fmt.Sprintf("idle-%s-%d.prof", co.ID, time.Now().Unix()))
		exec.Command("curl", "-s", "-o", out, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", co.Metrics, int(d.Seconds()))).Run()
	} else {
		time.Sleep(d) // measuring a rate over a fixed span, not waiting for an event
	}
	split := done()
	var parts []string
	for i, co := range c.Layout.Coordinators {
		taken := map[string]bool{}
		for name := range snapshots(co.ID) {
			if !snapsBefore[i][name] || strings.HasSuffix(name, ".tmp") {
				taken[strings.TrimSuffix(name, ".tmp")] = true
			}
		}
		for name := range snapsBefore[i] {
			if strings.HasSuffix(name, ".tmp") {
				taken[strings.TrimSuffix(name, ".tmp")] = true
			}
		}
		parts = append(parts, fmt.Sprintf("%s %.2f cores, %d snapshots", co.ID, split["coord "+co.ID], len(taken)))
	}
	report("  idle, each coordinator: %s", strings.Join(parts, "; "))
	return split
}

// saveProfiles keeps the first coordinator's heap and goroutine profiles
// in E2EM_PROFILE, when it names a folder (for finding what a person
// costs; not part of the measurement).
func saveProfiles(b *testing.B, c *ct.Cluster, phase string) {
	dir := os.Getenv("E2EM_PROFILE")
	if dir == "" {
		return
	}
	co := c.Layout.Coordinators[0]
	for name, path := range map[string]string{"heap": "/debug/pprof/heap", "goroutines": "/debug/pprof/goroutine?debug=1"} {
		resp, err := http.Get("http://" + co.Metrics + path)
		if err != nil {
			b.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, phase+"-"+co.ID+"-"+name+".prof"), body, 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// raiseFileLimit lifts this process's descriptor limit (and so the
// cluster's it starts) to want where allowed, and returns the limit.
func raiseFileLimit(want uint64) uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	if rl.Cur >= want {
		return rl.Cur
	}
	next := syscall.Rlimit{Cur: want, Max: max(want, rl.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next); err != nil {
		next = syscall.Rlimit{Cur: rl.Max, Max: rl.Max}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next) != nil {
			return rl.Cur
		}
	}
	return next.Cur
}
