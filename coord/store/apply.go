package store

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/coord/store/statepb"
)

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
