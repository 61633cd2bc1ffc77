package bench

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

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
	// raise the limit for this process and the cluster it starts.
	if got := raiseFileLimit(uint64(4*largest + 4096)); got < uint64(3*largest+1024) {
		b.Logf("descriptors limited to %d here: sizes past %d are skipped", got, (got-1024)/3)
		steps = slices.DeleteFunc(steps, func(n int) bool { return uint64(3*n+1024) > got })
		largest = slices.Max(steps)
	}
	for i := 0; i < b.N; i++ {
		manyOnline(b, steps, largest)
	}
}

func manyOnline(b *testing.B, steps []int, largest int) {
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
	// Two people beside the crowd: the prober (reaches everyone through
	// their relays; the relays join directory devices only) and the one
	// the nobody-online baseline mails.
	pair := crowd.Add(largest, largest+2)
	if _, err := loadgen.Online(bg, pair, relays, 2); err != nil {
		b.Fatal(err)
	}
	prober := pair[0]
	lookups := make([]api.CoordinatorClient, 64)
	for i := range lookups {
		lookups[i] = api.NewCoordinatorClient(c.NewConn(c.Layout.LB))
	}
	lookUpRate := func() float64 {
		authed := prober.Authed(bg)
		rate, _, _, errs := load(len(lookups), 3*time.Second, func(w int) error {
			_, err := lookups[w].LookUp(authed, &api.LookUpRequest{Query: pair[1].Login})
			return err
		})
		if errs > 0 {
			b.Logf("%d lookups failed", errs)
		}
		return rate
	}
	baseLookUps := lookUpRate()
	baseP50, baseP99 := latencies.measure(b, pair, 100)
	base := snapshot(b, c)
	b.Logf("nobody online: %.0f LookUp/s; PutMail→Event p50 %v p99 %v; coordinators %.1f MB live, %d goroutines; balancer %d descriptors",
		baseLookUps, baseP50, baseP99, base.live/1e6, base.goroutines, base.lbFDs)

	var people []*loadgen.Person
	defer func() {
		loadgen.Each(append(people, pair...), 256, func(p *loadgen.Person) error { p.Close(); return nil })
	}()
	type row struct {
		n                    int
		grpc, full           cost
		loginBurst, reach    time.Duration
		burstOf              int
		p50, p99             time.Duration
		lookUps              float64
		share                map[string]int
		unreached, unreserve int
	}
	var rows []row
	for _, n := range steps {
		fresh := crowd.Add(len(people), n)
		r := row{n: n, burstOf: len(fresh)}
		// gRPC first (sign-up, the log-in burst, keys, Events), then the
		// relay reservations, so each part's cost shows.
		crowd.Relays = -1
		if r.loginBurst, err = loadgen.Online(bg, fresh, relays, 64); err != nil {
			b.Fatal(err)
		}
		people = append(people, fresh...)
		r.grpc = snapshot(b, c)
		crowd.Relays = 0
		if err := loadgen.FirstError(loadgen.Each(fresh, 64, func(p *loadgen.Person) error { return p.StartHost(relays) })); err != nil {
			b.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(bg, 2*time.Minute)
		r.unreserve = loadgen.WaitReserved(wctx, people, p2p.RelaysPerPeer)
		cancel()
		r.full = snapshot(b, c)
		r.share = loadgen.RelayShare(people)
		start := time.Now()
		lost, first := loadgen.Reachable(bg, prober, people, 64)
		r.reach, r.unreached = time.Since(start), len(lost)
		if first != nil {
			b.Logf("%d unreachable: %v", len(lost), first)
		}
		r.p50, r.p99 = latencies.measure(b, people, 200)
		r.lookUps = lookUpRate()
		rows = append(rows, r)
		b.Logf("%d online: log-in burst of %d in %v; reachable all but %d in %v; PutMail→Event p50 %v p99 %v; %.0f LookUp/s (%.2f× none online); reservations %v; without reservation %d",
			n, r.burstOf, r.loginBurst.Round(time.Millisecond), r.unreached, r.reach.Round(time.Millisecond), r.p50, r.p99, r.lookUps, r.lookUps/baseLookUps, r.share, r.unreserve)
		b.Logf("  coordinators: gRPC only %.1f MB live, %d goroutines; with relays %.1f MB, %d goroutines; balancer %d descriptors",
			r.grpc.live/1e6, r.grpc.goroutines, r.full.live/1e6, r.full.goroutines, r.full.lbFDs)
	}

	// The reconnect storm: every connection drops, and everyone comes back
	// at once on the session it holds.
	before := logInCalls(b, c)
	loadgen.Each(people, 256, func(p *loadgen.Person) error { p.Disconnect(); return nil })
	start := time.Now()
	if err := loadgen.FirstError(loadgen.Each(people, len(people), func(p *loadgen.Person) error {
		if err := p.Connect(); err != nil {
			return err
		}
		if err := p.Resume(bg); err != nil {
			return err
		}
		return p.HoldEvents(bg)
	})); err != nil {
		b.Fatal(err)
	}
	storm := time.Since(start)
	hashes := logInCalls(b, c) - before
	b.Logf("reconnect storm: %d people back on their sessions in %v, %v LogIn calls", len(people), storm.Round(time.Millisecond), hashes)

	// Slopes between the smallest and largest sizes: what one more person
	// costs, whatever the cluster's own fixed cost.
	lo, hi := rows[0], rows[len(rows)-1]
	per := func(a, z float64) float64 { return (z - a) / float64(hi.n-lo.n) }
	if hi.n > lo.n {
		b.ReportMetric(per(lo.grpc.live, hi.grpc.live)/1e3, "grpc-KB/person")
		b.ReportMetric(per(lo.full.live, hi.full.live)/1e3, "KB/person")
		b.ReportMetric(per(float64(lo.grpc.goroutines), float64(hi.grpc.goroutines)), "grpc-goroutines/person")
		b.ReportMetric(per(float64(lo.full.goroutines), float64(hi.full.goroutines)), "goroutines/person")
		b.ReportMetric(per(float64(lo.full.lbFDs), float64(hi.full.lbFDs)), "lb-fds/person")
	}
	b.ReportMetric(float64(hi.n), "people")
	b.ReportMetric(float64(hi.unreached+hi.unreserve), "unreachable")
	b.ReportMetric(storm.Seconds(), "storm-s")
	b.ReportMetric(hashes, "storm-logins")
	b.ReportMetric(hi.lookUps/baseLookUps, "lookup-ratio")
	b.ReportMetric(float64(hi.p50.Microseconds())/1e3, "mail-p50-ms")
	b.ReportMetric(float64(hi.p99.Microseconds())/1e3, "mail-p99-ms")
	// The growth table, as docs/benchmarks.md shows it.
	var t strings.Builder
	fmt.Fprintf(&t, "| online | log-in burst | coord live MB (gRPC / +relays) | coord goroutines (gRPC / +relays) | lb fds | reachable | PutMail→Event p50 / p99 | LookUp/s |\n|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(&t, "| 0 | — | %.1f | %d | %d | — | %v / %v | %.0f |\n", base.live/1e6, base.goroutines, base.lbFDs, baseP50, baseP99, baseLookUps)
	for _, r := range rows {
		fmt.Fprintf(&t, "| %d | %d in %.1f s | %.1f / %.1f | %d / %d | %d | %d/%d in %.1f s | %v / %v | %.0f (%.2f×) |\n",
			r.n, r.burstOf, r.loginBurst.Seconds(), r.grpc.live/1e6, r.full.live/1e6, r.grpc.goroutines, r.full.goroutines, r.full.lbFDs,
			r.n-r.unreached, r.n, r.reach.Seconds(), r.p50, r.p99, r.lookUps, r.lookUps/baseLookUps)
	}
	b.Logf("growth table:\n%s", t.String())
}

// cost is the cluster's live memory (heap after a forced collection, plus
// stacks) and goroutines summed over the coordinators, and the balancer's
// open descriptors.
type cost struct {
	live       float64
	goroutines int
	lbFDs      int
}

func snapshot(b *testing.B, c *ct.Cluster) cost {
	var s cost
	for _, co := range c.Layout.Coordinators {
		heap, stack, goroutines, err := liveMemory(co.Metrics)
		if err != nil {
			b.Fatalf("%s: %v", co.ID, err)
		}
		s.live += heap + stack
		s.goroutines += goroutines
	}
	m, err := ct.Metrics(c.Layout.LBMetrics)
	if err != nil {
		b.Fatal(err)
	}
	for _, mm := range m["process_open_fds"].GetMetric() {
		s.lbFDs = int(mm.GetGauge().GetValue())
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

// logInCalls counts the LogIn calls the coordinators answered.
func logInCalls(b *testing.B, c *ct.Cluster) float64 {
	n := 0.0
	for _, co := range c.Layout.Coordinators {
		m, err := ct.Metrics(co.Metrics)
		if err != nil {
			b.Fatal(err)
		}
		for _, mm := range m["e2em_coord_requests_total"].GetMetric() {
			for _, l := range mm.GetLabel() {
				if l.GetName() == "method" && strings.HasSuffix(l.GetValue(), "/LogIn") {
					n += mm.GetCounter().GetValue()
				}
			}
		}
	}
	return n
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

func (m *mailClock) seen(to string, seq uint64, at time.Time) {
	k := fmt.Sprintf("%s/%d", to, seq)
	m.mu.Lock()
	defer m.mu.Unlock()
	if t0, ok := m.sent[k]; ok {
		m.done = append(m.done, at.Sub(t0))
		delete(m.sent, k)
		return
	}
	m.arrived[k] = at
}

func (m *mailClock) put(to string, seq uint64, t0 time.Time) {
	k := fmt.Sprintf("%s/%d", to, seq)
	m.mu.Lock()
	defer m.mu.Unlock()
	if at, ok := m.arrived[k]; ok {
		m.done = append(m.done, at.Sub(t0))
		delete(m.arrived, k)
		return
	}
	m.sent[k] = t0
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
