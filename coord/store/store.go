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
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

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
	rc.SnapshotThreshold = 8192
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
	s.wg.Add(1)
	go s.watchLeadership()
	return s, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
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

// FSM gives read access to the applied state. Call ReadBarrier first when
// the read must see writes acknowledged elsewhere.
func (s *Store) FSM() *FSM { return s.fsm }

// Apply proposes cmd and returns its result once it is committed and applied
// on this coordinator. On a follower the command travels to the leader. A
// command is retried (with the same request id) while no leader is known.
func (s *Store) Apply(ctx context.Context, cmd *statepb.Command) (*statepb.Result, error) {
	if len(cmd.RequestId) == 0 {
		cmd.RequestId = make([]byte, 16)
		rand.Read(cmd.RequestId)
	}
	if cmd.TimeUnixNano == 0 {
		cmd.TimeUnixNano = time.Now().UnixNano()
	}
	data, err := proto.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode command: %w", err)
	}
	ctx, cancel := withDefaultTimeout(ctx, 15*time.Second)
	defer cancel()
	for backoff := 10 * time.Millisecond; ; backoff = min(backoff*2, 250*time.Millisecond) {
		res, err := s.applyOnce(ctx, data)
		if err == nil {
			return res, nil
		}
		if !Retryable(err) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, status.Errorf(codes.Unavailable, "the cluster has no leader right now (%v); try again", err)
		case <-time.After(backoff):
		}
	}
}

func (s *Store) applyOnce(ctx context.Context, data []byte) (*statepb.Result, error) {
	if s.raft.State() == raft.Leader {
		_, res, err := s.ApplyOnLeader(ctx, data)
		return res, err
	}
	addr, err := s.leaderAPI()
	if err != nil {
		return nil, err
	}
	idx, raw, err := s.cfg.Forwarder.Apply(ctx, addr, data)
	if err != nil {
		return nil, err
	}
	var res statepb.Result
	if err := proto.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("decode result from leader: %w", err)
	}
	if err := s.applied.Wait(ctx, idx); err != nil {
		if errors.Is(err, context.Canceled) {
			return nil, status.Error(codes.Canceled, "the call was cancelled")
		}
		return nil, status.Errorf(codes.DeadlineExceeded, "waiting for this coordinator to apply index %d: %v", idx, err)
	}
	return &res, nil
}

// ApplyOnLeader runs an encoded command through Raft on this node, which must
// be the leader. It is what the Cluster.Apply RPC calls.
func (s *Store) ApplyOnLeader(ctx context.Context, data []byte) (uint64, *statepb.Result, error) {
	if s.raft.State() != raft.Leader {
		return 0, nil, ErrNotLeader
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	f := s.raft.Apply(data, timeout)
	if err := f.Error(); err != nil {
		return 0, nil, err
	}
	out, ok := f.Response().(*applyOutcome)
	if !ok || out.result == nil {
		return 0, nil, errors.New("state machine gave no result")
	}
	return f.Index(), out.result, out.err
}

// ReadBarrier returns once this coordinator has applied every write that was
// acknowledged (anywhere in the cluster) before the call.
func (s *Store) ReadBarrier(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx, 10*time.Second)
	defer cancel()
	for backoff := 10 * time.Millisecond; ; backoff = min(backoff*2, 250*time.Millisecond) {
		idx, err := s.reads.Do(ctx)
		if err == nil {
			return s.applied.Wait(ctx, idx)
		}
		if !Retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return status.Errorf(codes.Unavailable, "the cluster has no leader right now (%v); try again", err)
		case <-time.After(backoff):
		}
	}
}

// LeaderReadIndex is the commit index after confirming leadership; the
// Cluster.ReadIndex RPC answers with it.
func (s *Store) LeaderReadIndex(ctx context.Context) (uint64, error) {
	if !s.leaderReady.Load() {
		return 0, ErrNotLeader
	}
	return s.reads.Do(ctx)
}

// readIndexRound is one coalesced round: every read waiting for it began
// before the round did, so the index it returns covers their writes.
func (s *Store) readIndexRound(ctx context.Context) (uint64, error) {
	if s.raft.State() == raft.Leader {
		if !s.leaderReady.Load() {
			return 0, errNoLeader
		}
		// Every acknowledged write was applied here first (the leader
		// answers a forwarded write after applying it, and applied all
		// earlier terms' entries before leaderReady), so this node's
		// applied index covers them. It counts only entries the state
		// machine sees, so a follower can reach it; Raft's commit index
		// can end on a no-op that a follower's state machine never hears of.
		idx := s.applied.Index()
		if !s.cfg.LeaseReads {
			if err := s.raft.VerifyLeader().Error(); err != nil {
				return 0, err
			}
		} else if s.raft.State() != raft.Leader {
			return 0, ErrNotLeader
		}
		return idx, nil
	}
	addr, err := s.leaderAPI()
	if err != nil {
		return 0, err
	}
	return s.cfg.Forwarder.ReadIndex(ctx, addr)
}

func (s *Store) leaderAPI() (string, error) {
	_, id := s.raft.LeaderWithID()
	if id == "" {
		return "", errNoLeader
	}
	if string(id) == s.cfg.ID {
		return s.cfg.APIAddr, nil
	}
	// Every read on a follower asks the leader for its read index: one
	// point read here, not a scan of the node records.
	n, err := s.fsm.Node(string(id))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return "", err
	}
	if n != nil && n.ApiAddr != "" {
		return n.ApiAddr, nil
	}
	return "", fmt.Errorf("leader %s has not registered its API address: %w", id, errNoLeader)
}

// IsLeader reports whether this node leads and has caught up.
func (s *Store) IsLeader() bool { return s.leaderReady.Load() }

// LeaderID is the current leader's id, or "" while there is none.
func (s *Store) LeaderID() string {
	_, id := s.raft.LeaderWithID()
	return string(id)
}

// LeaderAPI is the leader's API address, for forwarding membership calls.
func (s *Store) LeaderAPI() (string, error) { return s.leaderAPI() }

// Join adds a coordinator to the cluster; only the leader can.
func (s *Store) Join(ctx context.Context, id, raftAddr, apiAddr string, nonvoter bool) error {
	if !s.IsLeader() {
		return ErrNotLeader
	}
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	for _, srv := range cf.Configuration().Servers {
		if srv.ID == raft.ServerID(id) && srv.Address == raft.ServerAddress(raftAddr) {
			return s.registerNode(ctx, id, raftAddr, apiAddr)
		}
		if srv.ID == raft.ServerID(id) || srv.Address == raft.ServerAddress(raftAddr) {
			if err := s.raft.RemoveServer(srv.ID, 0, 10*time.Second).Error(); err != nil {
				return fmt.Errorf("replace member %s: %w", srv.ID, err)
			}
		}
	}
	var f raft.IndexFuture
	if nonvoter {
		f = s.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, 10*time.Second)
	} else {
		f = s.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, 10*time.Second)
	}
	if err := f.Error(); err != nil {
		return fmt.Errorf("add member %s: %w", id, err)
	}
	s.log.Info("member joined", "id", id, "raft", raftAddr, "api", apiAddr, "nonvoter", nonvoter)
	return s.registerNode(ctx, id, raftAddr, apiAddr)
}

func (s *Store) registerNode(ctx context.Context, id, raftAddr, apiAddr string) error {
	node := &statepb.Node{Id: id}
	for _, n := range s.mustNodes() {
		if n.Id == id {
			node = proto.Clone(n).(*statepb.Node)
		}
	}
	node.RaftAddr, node.ApiAddr = raftAddr, apiAddr
	return s.Register(ctx, node)
}

// Register records a coordinator's addresses (API, Raft, libp2p relay) in
// the replicated state, unless they are already there as given.
func (s *Store) Register(ctx context.Context, node *statepb.Node) error {
	for _, n := range s.mustNodes() {
		if proto.Equal(n, node) {
			return nil
		}
	}
	res, err := s.Apply(ctx, &statepb.Command{Op: &statepb.Command_RegisterNode{RegisterNode: node}})
	if err == nil && res.Code != 0 {
		err = fmt.Errorf("register coordinator %s: %s", node.Id, res.Message)
	}
	return err
}

func (s *Store) mustNodes() []*statepb.Node {
	nodes, _ := s.fsm.Nodes()
	return nodes
}

// Leave removes a coordinator from the cluster; only the leader can.
func (s *Store) Leave(ctx context.Context, id string) error {
	if !s.IsLeader() {
		return ErrNotLeader
	}
	if err := s.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
		return fmt.Errorf("remove member %s: %w", id, err)
	}
	_, err := s.Apply(ctx, &statepb.Command{Op: &statepb.Command_RemoveNode{RemoveNode: &statepb.RemoveNode{Id: id}}})
	s.log.Info("member removed", "id", id)
	return err
}

// Member is one server in the Raft configuration.
type Member struct {
	ID, RaftAddr, APIAddr string
	Voter, Leader         bool
}

// Status describes this replica and the cluster as it sees it.
type Status struct {
	ID, State, LeaderID    string
	CommitIndex, Applied   uint64
	Term                   uint64
	LastContact            time.Time
	Members                []Member
	ClusterID              []byte
	HasLeader, LeaderReady bool
}

// Status reports Raft state for health checks, metrics and the admin call.
func (s *Store) Status() Status {
	st := Status{
		ID: s.cfg.ID, State: s.raft.State().String(), LeaderID: s.LeaderID(),
		CommitIndex: s.raft.CommitIndex(), Applied: s.applied.Index(),
		LastContact: s.raft.LastContact(), LeaderReady: s.leaderReady.Load(),
	}
	st.HasLeader = st.LeaderID != ""
	st.Term, _ = strconv.ParseUint(s.raft.Stats()["term"], 10, 64)
	if info, err := s.fsm.ClusterInfo(); err == nil {
		st.ClusterID = info.ClusterId
	}
	apiOf := map[string]string{}
	for _, n := range s.mustNodes() {
		apiOf[n.Id] = n.ApiAddr
	}
	if cf := s.raft.GetConfiguration(); cf.Error() == nil {
		for _, srv := range cf.Configuration().Servers {
			st.Members = append(st.Members, Member{
				ID: string(srv.ID), RaftAddr: string(srv.Address), APIAddr: apiOf[string(srv.ID)],
				Voter: srv.Suffrage == raft.Voter, Leader: string(srv.ID) == st.LeaderID,
			})
		}
	}
	return st
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
