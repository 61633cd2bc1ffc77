package store

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/coord/store/statepb"
	"github.com/e2em/e2em/internal/pki"
)

// inProcess forwards to the leader's Store directly, standing in for the
// Cluster gRPC service inside this unit test.
type inProcess struct {
	mu     sync.Mutex
	byAddr map[string]*Store
}

func (p *inProcess) get(addr string) (*Store, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.byAddr[addr]
	if !ok {
		return nil, fmt.Errorf("no store at %s", addr)
	}
	return s, nil
}

func (p *inProcess) Apply(ctx context.Context, leader string, cmd []byte) (uint64, []byte, error) {
	s, err := p.get(leader)
	if err != nil {
		return 0, nil, err
	}
	idx, res, err := s.ApplyOnLeader(ctx, cmd)
	if err != nil {
		return 0, nil, err
	}
	b, _ := proto.Marshal(res)
	return idx, b, nil
}

func (p *inProcess) ReadIndex(ctx context.Context, leader string) (uint64, error) {
	s, err := p.get(leader)
	if err != nil {
		return 0, err
	}
	return s.LeaderReadIndex(ctx)
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func tlsConfigs(t *testing.T, dir string) (*tls.Config, *tls.Config) {
	ca, _, err := pki.LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := ca.Issue("node", nil, cert, key); err != nil {
		t.Fatal(err)
	}
	caFile, _ := pki.CAFiles(dir)
	srv, err := pki.ServerConfig(cert, key, caFile)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := pki.ClientConfig(caFile, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return srv, cli
}

type testCluster struct {
	stores []*Store
	fwd    *inProcess
}

func startCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	dir := t.TempDir()
	srv, cli := tlsConfigs(t, dir)
	tc := &testCluster{fwd: &inProcess{byAddr: map[string]*Store{}}}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i := 0; i < n; i++ {
		api := fmt.Sprintf("api-%d", i)
		s, err := Open(Config{
			ID: fmt.Sprintf("n%d", i), Dir: filepath.Join(dir, fmt.Sprint(i)), RaftBind: freeAddr(t), APIAddr: api,
			ServerTLS: srv, ClientTLS: cli, Bootstrap: i == 0, Forwarder: tc.fwd, Logger: quiet,
			HeartbeatTimeout: 300 * time.Millisecond, ElectionTimeout: 300 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		tc.fwd.mu.Lock()
		tc.fwd.byAddr[api] = s
		tc.fwd.mu.Unlock()
		tc.stores = append(tc.stores, s)
	}
	leader := tc.stores[0]
	waitFor(t, 10*time.Second, func() bool { return leader.IsLeader() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := leader.Register(ctx, &statepb.Node{Id: "n0", ApiAddr: "api-0", RaftAddr: leader.RaftAddr()}); err != nil {
		t.Fatal(err)
	}
	for i, s := range tc.stores[1:] {
		if err := leader.Join(ctx, fmt.Sprintf("n%d", i+1), s.RaftAddr(), fmt.Sprintf("api-%d", i+1), false); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range tc.stores {
		waitFor(t, 10*time.Second, func() bool { _, err := s.FSM().ClusterInfo(); return err == nil && s.LeaderID() != "" })
	}
	return tc
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A write through any member is readable on every member right after it is
// acknowledged, with a read barrier and no waiting.
func TestReadYourWritesAcrossMembers(t *testing.T) {
	tc := startCluster(t, 3)
	ctx := context.Background()
	for i, via := range tc.stores {
		login := fmt.Sprintf("user%d", i)
		res, err := via.Apply(ctx, &statepb.Command{Op: account(login, login, "1")})
		if err != nil || res.Code != 0 {
			t.Fatalf("sign-up through member %d: %v %v", i, res, err)
		}
		for j, reader := range tc.stores {
			if err := reader.ReadBarrier(ctx); err != nil {
				t.Fatalf("barrier on %d: %v", j, err)
			}
			if _, err := reader.FSM().Account(login); err != nil {
				t.Fatalf("member %d does not see %s written through %d: %v", j, login, i, err)
			}
		}
	}
}

// Losing the leader elects another; writes go on through the survivors.
func TestLeaderLossKeepsWrites(t *testing.T) {
	tc := startCluster(t, 3)
	ctx := context.Background()
	if _, err := tc.stores[1].Apply(ctx, &statepb.Command{Op: account("before", "before", "1")}); err != nil {
		t.Fatal(err)
	}
	tc.stores[0].Close()
	survivors := tc.stores[1:]
	waitFor(t, 10*time.Second, func() bool { return survivors[0].IsLeader() || survivors[1].IsLeader() })
	res, err := survivors[0].Apply(ctx, &statepb.Command{Op: account("after", "after", "1")})
	if err != nil || res.Code != 0 {
		t.Fatalf("write after leader loss: %v %v", res, err)
	}
	for _, s := range survivors {
		if err := s.ReadBarrier(ctx); err != nil {
			t.Fatal(err)
		}
		for _, login := range []string{"before", "after"} {
			if _, err := s.FSM().Account(login); err != nil {
				t.Fatalf("%s missing: %v", login, err)
			}
		}
	}
}

// Large entries bring a snapshot long before their count would: the log a
// restart replays stays bounded in bytes.
func TestSnapshotOnceTheLogGrowsBigEnough(t *testing.T) {
	dir := t.TempDir()
	srv, cli := tlsConfigs(t, dir)
	s, err := Open(Config{
		ID: "n0", Dir: filepath.Join(dir, "n0"), RaftBind: freeAddr(t), APIAddr: "api-0",
		ServerTLS: srv, ClientTLS: cli, Bootstrap: true, Forwarder: &inProcess{byAddr: map[string]*Store{}},
		Logger:           slog.New(slog.NewTextHandler(io.Discard, nil)),
		HeartbeatTimeout: 300 * time.Millisecond, ElectionTimeout: 300 * time.Millisecond,
		SnapshotBytes: 8 << 10,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	waitFor(t, 10*time.Second, s.IsLeader)
	snapshotIndex := func() string { return s.raft.Stats()["last_snapshot_index"] }
	if got := snapshotIndex(); got != "0" {
		t.Fatalf("a snapshot before any write: index %s", got)
	}
	ctx := context.Background()
	long := strings.Repeat("x", 200)
	for i := range 64 { // ~16 KiB of entries, far fewer than snapshotThreshold
		login := fmt.Sprintf("user%d", i)
		if res, err := s.Apply(ctx, &statepb.Command{Op: account(login, login+long, "1")}); err != nil || res.Code != 0 {
			t.Fatalf("sign-up %d: %v %v", i, res, err)
		}
	}
	waitFor(t, 10*time.Second, func() bool { return snapshotIndex() != "0" })
	if n := s.fsm.sinceSnapshot.Load(); n >= 8<<10 {
		t.Fatalf("after the snapshot %d bytes still count as unsnapshotted", n)
	}
}
