package store

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/coord/store/statepb"
)

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
