package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/coord/api"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// load runs `workers` goroutines calling op for d and returns calls per
// second with the p50 and p99 latency of successful calls.
func load(workers int, d time.Duration, op func(worker int) error) (rate float64, p50, p99 time.Duration, errs int) {
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var mine []time.Duration
			bad := 0
			for time.Now().Before(deadline) {
				start := time.Now()
				if err := op(w); err != nil {
					bad++
					continue
				}
				mine = append(mine, time.Since(start))
			}
			mu.Lock()
			lat = append(lat, mine...)
			errs += bad
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	return float64(len(lat)) / d.Seconds(), percentile(lat, 0.5), percentile(lat, 0.99), errs
}

// clusterRounds is how many times BenchmarkClusterThroughBalancer measures
// each phase; it reports the median, which this VM's drifting speed moves
// far less than any one run.
const clusterRounds = 3

// BenchmarkClusterThroughBalancer measures lookups and cheap writes (mailbox
// puts) per second through the balancer, TLS and gRPC included, beside a
// bare Raft floor measured in the same run: three hashicorp/raft nodes on
// loopback with raft-wal and a state machine that only sets a key in badger.
// Each round measures the floor, then the cluster's writes and lookups from
// grpc-go clients, then both again from h2load, one after another.
func BenchmarkClusterThroughBalancer(b *testing.B) {
	const writers = 64
	const d = 5 * time.Second
	floorApply := startRaftFloor(b)

	args := []string{"-mailbox-max-count", "100000000", "-mailbox-max-bytes", "100000000000", "-log-level", "warn"}
	// E2EM_BENCH_COORD_ARGS adds coordinator flags, to compare settings.
	args = append(args, strings.Fields(os.Getenv("E2EM_BENCH_COORD_ARGS"))...)
	c := ct.Start(b, ct.Options{N: 3, CoordArgs: args})
	ctx := context.Background()
	lb := c.LB()
	if _, err := lb.SignUp(ctx, &api.SignUpRequest{Username: "bench", RollNumber: "1", Password: "password123"}); err != nil {
		b.Fatal(err)
	}
	resp, err := lb.LogIn(ctx, &api.LogInRequest{LoginId: "bench1", Password: "password123"})
	if err != nil {
		b.Fatal(err)
	}
	authed := api.WithToken(ctx, resp.Token)
	clients := make([]api.CoordinatorClient, writers)
	for i := range clients {
		clients[i] = api.NewCoordinatorClient(c.NewConn(c.Layout.LB))
	}
	envelope := make([]byte, 256)
	payload := make([]byte, 256)
	us := func(t time.Duration) float64 { return float64(t) / 1e3 }
	for i := 0; i < b.N; i++ {
		m := map[string][]float64{}
		add := func(name string, v float64) { m[name] = append(m[name], v) }
		for r := 0; r < clusterRounds; r++ {
			floor, fP50, fP99, _ := load(writers, d, func(int) error {
				return floorApply(payload)
			})
			stop := profile(b, c, fmt.Sprintf("write%d", r))
			wRate, wP50, wP99, wErr := load(writers, d, func(w int) error {
				_, err := clients[w].PutMail(authed, &api.PutMailRequest{To: "bench1", Envelope: envelope})
				return err
			})
			stop()
			stop = profile(b, c, fmt.Sprintf("lookup%d", r))
			rRate, rP50, rP99, rErr := load(writers, d, func(w int) error {
				_, err := clients[w].LookUp(authed, &api.LookUpRequest{Query: "bench1"})
				return err
			})
			stop()
			hwRate, hwMean := h2loadCalls(b, c, resp.Token, writers, d, "PutMail", &api.PutMailRequest{To: "bench1", Envelope: envelope})
			hRate, hMean := h2loadCalls(b, c, resp.Token, writers, d, "LookUp", &api.LookUpRequest{Query: "bench1"})
			if wErr+rErr > 0 {
				b.Logf("errors: %d writes, %d lookups", wErr, rErr)
			}
			b.Logf("round %d: floor %.0f writes/s; grpc-go clients: %.0f writes/s (ratio %.2f), %.0f lookups/s; h2load: %.0f writes/s (ratio %.2f), %.0f lookups/s",
				r+1, floor, wRate, wRate/floor, rRate, hwRate, hwRate/floor, hRate)
			add("floor-writes/s", floor)
			add("floor-p50-µs", us(fP50))
			add("floor-p99-µs", us(fP99))
			add("writes/s", wRate)
			add("write-p50-µs", us(wP50))
			add("write-p99-µs", us(wP99))
			add("write-ratio", wRate/floor)
			add("lookups/s", rRate)
			add("lookup-p50-µs", us(rP50))
			add("lookup-p99-µs", us(rP99))
			if hRate > 0 {
				add("h2load-writes/s", hwRate)
				add("h2load-write-mean-µs", us(hwMean))
				add("h2load-write-ratio", hwRate/floor)
				add("h2load-lookups/s", hRate)
				add("h2load-lookup-mean-µs", us(hMean))
			}
		}
		for name, vs := range m {
			b.ReportMetric(median(vs), name)
		}
	}
}

// median is the middle value (the upper middle of an even count).
func median(vs []float64) float64 {
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// h2loadCalls measures calls of one API method per second through the
// balancer with a load generator written in C (nghttp2's h2load: `conns`
// TLS HTTP/2 connections, one call at a time on each, the same request
// every time, gRPC framed by hand), which leaves more of the two cores to
// the cluster than grpc-go clients in this process do. Every call h2load
// counts must also have been answered OK by a coordinator
// (e2em_coord_requests_total, summed over all of them), so a gRPC error
// inside an HTTP 200 cannot pass; any failed call fails the benchmark.
func h2loadCalls(b *testing.B, c *ct.Cluster, token string, conns int, d time.Duration, method string, req proto.Message) (rate float64, mean time.Duration) {
	h2load, err := exec.LookPath("h2load")
	if err != nil {
		b.Log("h2load not installed (Debian's nghttp2-client): the C load generator's rates are not measured")
		return 0, 0
	}
	path := "/" + api.Coordinator_ServiceDesc.ServiceName + "/" + method
	msg, err := proto.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	body := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
	body = append(body, msg...)
	bodyFile := filepath.Join(b.TempDir(), method+".grpc")
	if err := os.WriteFile(bodyFile, body, 0o600); err != nil {
		b.Fatal(err)
	}
	okBefore, badBefore := callCounts(c, path)
	cmd := exec.Command(h2load, "-t", "1", "-c", fmt.Sprint(conns), "-m", "1",
		"-D", fmt.Sprint(int(d.Seconds())), "--warm-up-time", "1",
		"-d", bodyFile,
		"-H", "content-type: application/grpc", "-H", "te: trailers",
		"-H", api.TokenKey+": Bearer "+token,
		"https://"+c.Layout.LB+path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("h2load: %v\n%s", err, out)
	}
	okAfter, badAfter := callCounts(c, path)
	// h2load's summary (for the main duration, after the warm-up):
	//   finished in 5.00s, 12345.60 req/s, 1.23MB/s
	//   requests: 61728 total, 61792 started, 61728 done, 61728 succeeded, 0 failed, ...
	//   time for request:  min  max  mean  sd  +/- sd
	var succeeded float64
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(strings.ReplaceAll(line, ",", ""))
		switch {
		case strings.HasPrefix(line, "finished in") && len(f) >= 4:
			rate, _ = strconv.ParseFloat(f[3], 64)
		case strings.HasPrefix(line, "requests:") && len(f) >= 9:
			succeeded, _ = strconv.ParseFloat(f[7], 64)
		case strings.HasPrefix(line, "time for request:") && len(f) >= 6:
			mean, _ = time.ParseDuration(strings.ReplaceAll(f[5], "us", "µs"))
		}
	}
	// Every call h2load counts as a success (an HTTP 200) must have been a
	// call the coordinators answered OK, and none may have failed.
	if bad := badAfter - badBefore; bad > 0 || rate == 0 || okAfter-okBefore < succeeded {
		b.Fatalf("h2load: %.0f %s calls OK and %.0f refused by the coordinators, %.0f succeeded for h2load\n%s",
			okAfter-okBefore, method, bad, succeeded, out)
	}
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	b.Logf("h2load used %v of CPU for %.0f %s calls (%.1f µs each, warm-up included)",
		cpu.Round(time.Millisecond), okAfter-okBefore, method, float64(cpu.Microseconds())/(okAfter-okBefore))
	return rate, mean
}

// callCounts sums, over the coordinators, the calls of one method (its
// full gRPC path) answered OK and those that failed; calls the client
// cancelled (h2load resets the ones in flight when its time is up) are
// neither.
func callCounts(c *ct.Cluster, path string) (ok, bad float64) {
	for code, n := range c.Calls(path) {
		switch code {
		case "OK":
			ok += n
		case "Canceled": // in flight when h2load stopped
		default:
			bad += n
		}
	}
	return ok, bad
}

// floorFSM only sets one key in badger per entry.
type floorFSM struct{ db *badger.DB }

func (f *floorFSM) Apply(l *raft.Log) interface{} {
	return f.db.Update(func(txn *badger.Txn) error {
		return txn.Set([]byte(fmt.Sprintf("k%d", l.Index)), l.Data)
	})
}
func (f *floorFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, fmt.Errorf("no snapshots") }
func (f *floorFSM) Restore(io.ReadCloser) error         { return nil }

// startRaftFloor starts the floor's three Raft nodes and returns a write
// to its leader.
func startRaftFloor(b *testing.B) (apply func([]byte) error) {
	dir := b.TempDir()
	var nodes []*raft.Raft
	var servers []raft.Server
	for i := 0; i < 3; i++ {
		nd := filepath.Join(dir, fmt.Sprint(i))
		db, err := badger.Open(badger.DefaultOptions(filepath.Join(nd, "badger")).WithLogger(nil))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { db.Close() })
		os.MkdirAll(filepath.Join(nd, "wal"), 0o700)
		w, err := wal.Open(filepath.Join(nd, "wal"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { w.Close() })
		trans, err := raft.NewTCPTransport("127.0.0.1:0", nil, 8, 10*time.Second, io.Discard)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { trans.Close() })
		cfg := raft.DefaultConfig()
		cfg.LocalID = raft.ServerID(fmt.Sprint(i))
		cfg.LogOutput = io.Discard
		r, err := raft.NewRaft(cfg, &floorFSM{db}, w, w, raft.NewInmemSnapshotStore(), trans)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { r.Shutdown().Error() })
		nodes = append(nodes, r)
		servers = append(servers, raft.Server{ID: cfg.LocalID, Address: trans.LocalAddr()})
	}
	if err := nodes[0].BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		b.Fatal(err)
	}
	var leader *raft.Raft
	ct.Eventually(b, 10*time.Second, func() error {
		for _, n := range nodes {
			if n.State() == raft.Leader {
				leader = n
				return nil
			}
		}
		return fmt.Errorf("no leader")
	})
	return func(data []byte) error { return leader.Apply(data, 5*time.Second).Error() }
}

// profile takes a 4 s CPU profile of each coordinator while the next load
// runs, and one of the benchmark's own process (the clients) until the
// returned stop is called, when E2EM_PROFILE names a folder (for finding
// where the time goes; not part of the measurement).
func profile(b *testing.B, c *ct.Cluster, phase string) (stop func()) {
	dir := os.Getenv("E2EM_PROFILE")
	if dir == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(dir, phase+"-clients.prof"))
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	stop = func() {
		pprof.StopCPUProfile()
		f.Close()
	}
	leader, err := c.Leader()
	if err != nil {
		b.Fatal(err)
	}
	for i, co := range c.Layout.Coordinators {
		role := "follower"
		if i == leader {
			role = "leader"
		}
		out := filepath.Join(dir, phase+"-"+role+"-"+co.ID+".prof")
		go exec.Command("curl", "-s", "-o", out, "http://"+co.Metrics+"/debug/pprof/profile?seconds=4").Run()
	}
	return stop
}
