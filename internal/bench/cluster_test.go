package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"

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

// BenchmarkClusterThroughBalancer measures lookups and cheap writes (mailbox
// puts) per second through the balancer, TLS and gRPC included, beside a
// bare Raft floor measured in the same run: three hashicorp/raft nodes on
// loopback with raft-wal and a state machine that only sets a key in badger.
func BenchmarkClusterThroughBalancer(b *testing.B) {
	const writers = 64
	const d = 5 * time.Second
	floor, floorP50, floorP99 := raftFloor(b, writers, d)

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
	for i := 0; i < b.N; i++ {
		profile(b, c, "write")
		wRate, wP50, wP99, wErr := load(writers, d, func(w int) error {
			_, err := clients[w].PutMail(authed, &api.PutMailRequest{To: "bench1", Envelope: envelope})
			return err
		})
		profile(b, c, "lookup")
		rRate, rP50, rP99, rErr := load(writers, d, func(w int) error {
			_, err := clients[w].LookUp(authed, &api.LookUpRequest{Query: "bench1"})
			return err
		})
		if wErr+rErr > 0 {
			b.Logf("errors: %d writes, %d lookups", wErr, rErr)
		}
		us := func(t time.Duration) float64 { return float64(t) / 1e3 }
		b.ReportMetric(floor, "floor-writes/s")
		b.ReportMetric(us(floorP50), "floor-p50-µs")
		b.ReportMetric(us(floorP99), "floor-p99-µs")
		b.ReportMetric(wRate, "writes/s")
		b.ReportMetric(us(wP50), "write-p50-µs")
		b.ReportMetric(us(wP99), "write-p99-µs")
		b.ReportMetric(wRate/floor, "write-ratio")
		b.ReportMetric(rRate, "lookups/s")
		b.ReportMetric(us(rP50), "lookup-p50-µs")
		b.ReportMetric(us(rP99), "lookup-p99-µs")
	}
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

func raftFloor(b *testing.B, writers int, d time.Duration) (float64, time.Duration, time.Duration) {
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
	payload := make([]byte, 256)
	rate, p50, p99, _ := load(writers, d, func(int) error {
		return leader.Apply(payload, 5*time.Second).Error()
	})
	return rate, p50, p99
}

// profile takes a 4 s CPU profile of the leader and of a follower while the
// next load runs, when E2EM_PROFILE names a folder (for finding where the
// time goes; not part of the measurement).
func profile(b *testing.B, c *ct.Cluster, phase string) {
	dir := os.Getenv("E2EM_PROFILE")
	if dir == "" {
		return
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
}
