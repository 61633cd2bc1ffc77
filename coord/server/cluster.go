package server

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/coord/api"
)

// Apply runs a forwarded command on this coordinator, which must lead.
func (s *Server) Apply(ctx context.Context, req *api.ApplyRequest) (*api.ApplyResponse, error) {
	idx, res, err := s.store.ApplyOnLeader(ctx, req.Command)
	if err != nil {
		return nil, storeErr(err)
	}
	b, err := proto.Marshal(res)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &api.ApplyResponse{Index: idx, Result: b}, nil
}

// ReadIndex answers a follower's read barrier.
func (s *Server) ReadIndex(ctx context.Context, _ *api.ReadIndexRequest) (*api.ReadIndexResponse, error) {
	idx, err := s.store.LeaderReadIndex(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	return &api.ReadIndexResponse{Index: idx}, nil
}

// Join adds a coordinator; a follower passes the call to the leader.
func (s *Server) Join(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error) {
	if req.Id == "" || req.RaftAddr == "" || req.ApiAddr == "" {
		return nil, status.Error(codes.InvalidArgument, "id, raft_addr and api_addr are required")
	}
	if !s.store.IsLeader() {
		return onLeaderCall(s, func(c api.ClusterClient) (*api.JoinResponse, error) { return c.Join(ctx, req) })
	}
	if err := s.store.Join(ctx, req.Id, req.RaftAddr, req.ApiAddr, req.Nonvoter); err != nil {
		return nil, storeErr(err)
	}
	return &api.JoinResponse{}, nil
}

// Leave removes a coordinator; a follower passes the call to the leader.
func (s *Server) Leave(ctx context.Context, req *api.LeaveRequest) (*api.LeaveResponse, error) {
	if req.Id == "" {
		return nil, status.Error(codes.InvalidArgument, "id is required")
	}
	if !s.store.IsLeader() {
		return onLeaderCall(s, func(c api.ClusterClient) (*api.LeaveResponse, error) { return c.Leave(ctx, req) })
	}
	if err := s.store.Leave(ctx, req.Id); err != nil {
		return nil, storeErr(err)
	}
	return &api.LeaveResponse{}, nil
}

func onLeaderCall[T any](s *Server, call func(api.ClusterClient) (T, error)) (T, error) {
	var zero T
	addr, err := s.store.LeaderAPI()
	if err != nil {
		return zero, storeErr(err)
	}
	conn, err := s.fwd.conn(addr)
	if err != nil {
		return zero, storeErr(err)
	}
	return call(api.NewClusterClient(conn))
}

// Status reports this coordinator's view of the cluster.
func (s *Server) Status(ctx context.Context, _ *api.StatusRequest) (*api.StatusResponse, error) {
	st := s.store.Status()
	resp := &api.StatusResponse{
		Id: st.ID, State: st.State, LeaderId: st.LeaderID, CommitIndex: st.CommitIndex,
		AppliedIndex: st.Applied, ClusterId: hex.EncodeToString(st.ClusterID), Term: st.Term,
	}
	for _, m := range st.Members {
		resp.Members = append(resp.Members, &api.Member{Id: m.ID, RaftAddr: m.RaftAddr, ApiAddr: m.APIAddr, Voter: m.Voter, Leader: m.Leader})
	}
	return resp, nil
}

// Forwarder carries a follower's writes and read barriers to the leader over
// the Cluster service, with this coordinator's client certificate. It keeps
// one connection per leader address.
type Forwarder struct {
	tls   *tls.Config
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// NewForwarder uses cfg (the cluster CA and this coordinator's certificate).
func NewForwarder(cfg *tls.Config) *Forwarder {
	return &Forwarder{tls: cfg, conns: map[string]*grpc.ClientConn{}}
}

func (f *Forwarder) conn(addr string) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.conns[addr]; ok {
		return c, nil
	}
	c, err := api.DialTLS(addr, f.tls)
	if err != nil {
		return nil, err
	}
	f.conns[addr] = c
	return c, nil
}

// Apply implements store.Forwarder.
func (f *Forwarder) Apply(ctx context.Context, leader string, command []byte) (uint64, []byte, error) {
	c, err := f.conn(leader)
	if err != nil {
		return 0, nil, err
	}
	resp, err := api.NewClusterClient(c).Apply(ctx, &api.ApplyRequest{Command: command})
	if err != nil {
		return 0, nil, err
	}
	return resp.Index, resp.Result, nil
}

// ReadIndex implements store.Forwarder.
func (f *Forwarder) ReadIndex(ctx context.Context, leader string) (uint64, error) {
	c, err := f.conn(leader)
	if err != nil {
		return 0, err
	}
	resp, err := api.NewClusterClient(c).ReadIndex(ctx, &api.ReadIndexRequest{})
	if err != nil {
		return 0, err
	}
	return resp.Index, nil
}

// Close drops every connection.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for a, c := range f.conns {
		errs = append(errs, c.Close())
		delete(f.conns, a)
	}
	return errors.Join(errs...)
}
