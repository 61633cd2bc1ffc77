// Package store owns the coordinator's replicated state: hashicorp/raft over
// a mutual-TLS transport, raft-wal as log and stable store, and the state
// machine (FSM) over badger. It is the only writer of cluster state. The API
// layer talks to it through Apply (writes, forwarded to the leader) and
// ReadBarrier followed by the FSM's read methods (reads that see every write
// acknowledged before them, on any coordinator).
package store

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/e2em/e2em/coord/store/statepb"
)

// Forwarder carries calls a follower cannot answer alone to the leader's API
// address. The server package implements it over the Cluster gRPC service.
type Forwarder interface {
	// Apply runs an encoded command on the leader; it returns the Raft
	// index the command was applied at and the encoded Result.
	Apply(ctx context.Context, leaderAPI string, command []byte) (uint64, []byte, error)
	// ReadIndex returns the leader's commit index after it confirmed it
	// still leads.
	ReadIndex(ctx context.Context, leaderAPI string) (uint64, error)
}

// Config says how to open a Store.
type Config struct {
	ID        string // this coordinator's Raft server id
	Dir       string // data directory: badger/, raft/ and snapshots/ live here
	RaftBind  string // host:port for the Raft transport
	APIAddr   string // this coordinator's API address, registered for forwarding
	ServerTLS *tls.Config
	ClientTLS *tls.Config
	// Bootstrap makes this node a one-member cluster when it has no state.
	Bootstrap bool
	Forwarder Forwarder
	Publish   func(Event)
	Logger    *slog.Logger
	// Timing, zero for the defaults.
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	// LeaseReads lets the leader answer read-index requests on its lease
	// instead of confirming leadership with a heartbeat round each time:
	// hashicorp/raft steps a leader down when it has not heard from a
	// quorum for LeaderLeaseTimeout (half the heartbeat timeout), before
	// any other node can win an election, so a leader in Leader state has
	// no newer leader (Consul's "default" read mode). Off, every read round
	// costs a VerifyLeader (Consul's "consistent" mode).
	LeaseReads bool
	// SnapshotBytes takes a snapshot once this many bytes of log entries
	// were applied since the last, whatever their count (0: 256 MiB).
	SnapshotBytes int64
}

// Store is one coordinator's replica of the cluster state.
type Store struct {
	cfg       Config
	log       *slog.Logger
	db        *badger.DB
	wal       *wal.WAL
	raft      *raft.Raft
	transport *raft.NetworkTransport
	fsm       *FSM
	applied   indexWaiter
	reads     coalescer
	// leaderReady is true once this node leads and has applied everything
	// earlier leaders committed (a barrier after taking over).
	leaderReady atomic.Bool
	notify      chan bool
	done        chan struct{}
	wg          sync.WaitGroup
	closeOnce   sync.Once
	closeErr    error
}

// Retryable is true for errors after which the same call may succeed once a
// leader is elected.
func Retryable(err error) bool {
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) ||
		errors.Is(err, raft.ErrEnqueueTimeout) || errors.Is(err, raft.ErrLeadershipTransferInProgress) ||
		errors.Is(err, errNoLeader) || errors.Is(err, raft.ErrAbortedByRestore) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.FailedPrecondition:
		return true
	}
	return false
}

var errNoLeader = errors.New("no leader elected yet")

// ErrNotLeader is answered by leader-only calls on a follower.
var ErrNotLeader = status.Error(codes.FailedPrecondition, "this coordinator is not the leader")

// Open opens (or creates) the replica in cfg.Dir and starts Raft.
func Open(cfg Config) (*Store, error) {
	s := &Store{cfg: cfg, log: cfg.Logger, notify: make(chan bool, 8), done: make(chan struct{})}
	if s.log == nil {
		s.log = slog.Default()
	}
	for _, d := range []string{"badger", "raft", "snapshots"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("create data directory: %w", err)
		}
	}
	opts := badger.DefaultOptions(filepath.Join(cfg.Dir, "badger")).
		WithLogger(badgerLogger{s.log.With("part", "badger")}).
		WithNumVersionsToKeep(1).
		WithMemTableSize(16 << 20).
		WithValueThreshold(1 << 10)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open state database: %w", err)
	}
	s.db = db
	s.fsm = NewFSM(db, s.log, func(e Event) {
		if cfg.Publish != nil {
			cfg.Publish(e)
		}
	})
	s.fsm.onApplied = s.applied.Set
	if idx, err := s.fsm.AppliedIndex(); err == nil {
		s.applied.Set(idx)
	}
	w, err := wal.Open(filepath.Join(cfg.Dir, "raft"))
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open raft log: %w", err)
	}
	s.wal = w
	snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(cfg.Dir, "snapshots"), 2, hcLogger(s.log, "snapshots"))
	if err != nil {
		s.closeStores()
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}
	layer, err := newTLSStreamLayer(cfg.RaftBind, cfg.ServerTLS, cfg.ClientTLS)
	if err != nil {
		s.closeStores()
		return nil, fmt.Errorf("listen for raft on %s: %w", cfg.RaftBind, err)
	}
	s.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  layer,
		MaxPool: 8,
		Timeout: 10 * time.Second,
		Logger:  hcLogger(s.log, "raft-net"),
	})
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hcLogger(s.log, "raft")
	rc.NotifyCh = s.notify
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256
	// How long an idle leader waits before telling followers the new commit
	// index: it bounds how long a read on a follower right after a write
	// waits, and costs an AppendEntries per follower each period when idle.
	rc.CommitTimeout = 20 * time.Millisecond
	rc.HeartbeatTimeout = orDefault(cfg.HeartbeatTimeout, time.Second)
	rc.ElectionTimeout = orDefault(cfg.ElectionTimeout, time.Second)
	rc.LeaderLeaseTimeout = rc.HeartbeatTimeout / 2
	// A snapshot is a backup of the whole state (see FSM.Snapshot): its
	// cost grows with the people the cluster holds, so it is taken every
	// 65,536 entries, not every 8,192. With 10,000 people online a
	// snapshot was most of the leader's idle CPU (BenchmarkManyOnline's
	// idle profile); a restart replays at most this many entries past it.
	rc.SnapshotThreshold = snapshotThreshold
	rc.TrailingLogs = 10240
	s.reads.run = s.readIndexRound

	hasState, err := raft.HasExistingState(w, w, snaps)
	if err != nil {
		s.closeAll()
		return nil, fmt.Errorf("inspect raft state: %w", err)
	}
	// Recent entries stay in memory: the leader reads them back to send to
	// followers, and followers read them back to apply, and without the
	// cache each read is a pread and a decode of the WAL (3 % of a
	// coordinator's CPU under writes). 256 entries bound it: mail entries
	// may be 1 MiB each.
	logs, err := raft.NewLogCache(256, w)
	if err != nil {
		s.closeAll()
		return nil, fmt.Errorf("raft log cache: %w", err)
	}
	r, err := raft.NewRaft(rc, s.fsm, logs, w, snaps, s.transport)
	if err != nil {
		s.closeAll()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	s.raft = r
	if cfg.Bootstrap && !hasState {
		f := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			ID: rc.LocalID, Address: s.transport.LocalAddr(), Suffrage: raft.Voter,
		}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			s.Close()
			return nil, fmt.Errorf("bootstrap cluster: %w", err)
		}
	}
	s.wg.Add(2)
	go s.watchLeadership()
	go s.snapshotBySize(orDefault(cfg.SnapshotBytes, snapshotBytes), time.Second)
	return s, nil
}

// Snapshots are taken every snapshotThreshold log entries, or sooner
// once the entries since the last add up to snapshotBytes: the log a
// restart replays, and the disk it holds, stay bounded when entries are
// large (mailbox envelopes of file chunks run to a MiB each).
const (
	snapshotThreshold = 65536
	snapshotBytes     = 256 << 20
)

// snapshotBySize takes a snapshot whenever the entries applied since the
// last one reach limit bytes, looking every period.
func (s *Store) snapshotBySize(limit int64, period time.Duration) {
	defer s.wg.Done()
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		if s.fsm.sinceSnapshot.Load() < limit {
			continue
		}
		if err := s.raft.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
			s.log.Warn("snapshot by size failed", "err", err)
		}
	}
}

// orDefault is v when set (positive), else def.
func orDefault[T int64 | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// HasExistingState reports whether dir already holds a Raft replica.
func HasExistingState(dir string) bool {
	entries, err := os.ReadDir(filepath.Join(dir, "raft"))
	return err == nil && len(entries) > 0
}

// watchLeadership keeps leaderReady true only while this node leads and has
// caught up, and initialises the cluster the first time anyone leads it.
func (s *Store) watchLeadership() {
	defer s.wg.Done()
	for {
		select {
		case <-s.done:
			return
		case leader := <-s.notify:
			s.leaderReady.Store(false)
			if !leader {
				s.log.Info("lost leadership")
				continue
			}
			s.log.Info("became leader")
			if err := s.raft.Barrier(30 * time.Second).Error(); err != nil {
				s.log.Warn("barrier after election failed", "err", err)
				continue
			}
			if s.raft.State() != raft.Leader {
				continue
			}
			s.leaderReady.Store(true)
			s.initClusterOnce()
		}
	}
}

func (s *Store) initClusterOnce() {
	if _, err := s.fsm.ClusterInfo(); !errors.Is(err, ErrNotFound) {
		return
	}
	id, key := make([]byte, 16), make([]byte, 32)
	rand.Read(id)
	rand.Read(key)
	cmd := &statepb.Command{Op: &statepb.Command_InitCluster{InitCluster: &statepb.InitCluster{ClusterId: id, TokenKey: key}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if res, err := s.Apply(ctx, cmd); err != nil {
		s.log.Error("initialise cluster", "err", err)
	} else if res.Code == 0 {
		s.log.Info("initialised a new cluster", "cluster_id", fmt.Sprintf("%x", id))
	}
}

// RaftAddr is the address the Raft transport listens on.
func (s *Store) RaftAddr() string { return string(s.transport.LocalAddr()) }

// WaitForLeader blocks until some node leads, or ctx ends.
func (s *Store) WaitForLeader(ctx context.Context) error {
	for {
		if s.LeaderID() != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TransferLeadership hands leadership to another voter before a planned
// stop, so clients wait for no election.
func (s *Store) TransferLeadership() {
	if s.raft.State() != raft.Leader {
		return
	}
	if err := s.raft.LeadershipTransfer().Error(); err != nil {
		s.log.Warn("leadership transfer failed", "err", err)
	}
}

// Close stops Raft and closes the stores. It does not leave the cluster.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Store) close() error {
	close(s.done)
	var err error
	if s.raft != nil {
		err = s.raft.Shutdown().Error()
	}
	s.wg.Wait()
	if s.transport != nil {
		s.transport.Close()
	}
	return errors.Join(err, s.closeStores())
}

func (s *Store) closeAll() {
	if s.transport != nil {
		s.transport.Close()
	}
	s.closeStores()
}

func (s *Store) closeStores() error {
	var errs []error
	if s.wal != nil {
		errs = append(errs, s.wal.Close())
	}
	if s.db != nil {
		errs = append(errs, s.db.Close())
	}
	return errors.Join(errs...)
}

func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}
