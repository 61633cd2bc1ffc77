// Package server owns the coordinator's gRPC face: it validates every call,
// authenticates sessions, limits log-in attempts and mailbox use, and turns
// calls into store commands (writes) or barrier-protected reads. It never
// touches badger or Raft itself; it talks to the store through Store.
package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	p2ppeer "github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/coord/store"
	"github.com/e2em/e2em/coord/store/statepb"
)

// Store is what the API layer needs from the replicated state.
type Store interface {
	Apply(ctx context.Context, cmd *statepb.Command) (*statepb.Result, error)
	ReadBarrier(ctx context.Context) error
	FSM() *store.FSM
	ApplyOnLeader(ctx context.Context, data []byte) (uint64, *statepb.Result, error)
	LeaderReadIndex(ctx context.Context) (uint64, error)
	Join(ctx context.Context, id, raftAddr, apiAddr string, nonvoter bool) error
	Leave(ctx context.Context, id string) error
	LeaderAPI() (string, error)
	IsLeader() bool
	Status() store.Status
}

// Config holds the limits the server enforces.
type Config struct {
	SessionTTL       time.Duration // how long a log-in lasts
	MaxLoginFailures int           // failed log-ins per account from one address in LoginWindow, then backoff
	MaxAddrFailures  int           // failed log-ins per address per minute, whatever the accounts
	HashQueue        int           // sign-ups and log-ins that may wait for a core to hash
	MaxSignUps       int           // sign-ups per address per hour
	MailMaxBytes     int           // largest envelope
	MailboxMaxCount  uint32        // envelopes waiting per recipient
	MailboxMaxBytes  uint64        // bytes waiting per recipient
	SenderMaxCount   uint32        // envelopes one sender may have waiting for one recipient
	SenderMaxBytes   uint64        // bytes one sender may have waiting for one recipient
	MaxGroupsCreated uint32        // groups one account may create
	MaxGroupsJoined  uint32        // groups one account may belong to
	Logger           *slog.Logger
}

// DefaultConfig is what the issue asks for.
func DefaultConfig() Config {
	return Config{
		SessionTTL:       24 * time.Hour,
		MaxLoginFailures: 10,
		MaxAddrFailures:  30,
		HashQueue:        hashQueuePlaces,
		MaxSignUps:       20,
		MailMaxBytes:     1 << 20,
		MailboxMaxCount:  1000,
		MailboxMaxBytes:  64 << 20,
		SenderMaxCount:   250,      // a quarter of the box
		SenderMaxBytes:   36 << 20, // a 32 MiB file (the client's mailbox file limit) and its envelopes
		MaxGroupsCreated: 100,
		MaxGroupsJoined:  1000,
	}
}

// Server implements the Coordinator and Cluster gRPC services.
type Server struct {
	api.UnimplementedCoordinatorServer
	api.UnimplementedClusterServer
	cfg   Config
	store Store
	hub   *Hub
	log   *slog.Logger
	fwd   *Forwarder
	// hashing runs argon2id a core at a time with a bounded queue.
	hashing *hashQueue
}

// hashQueuePlaces is how many sign-ups and log-ins may wait for a core: at
// ~60 ms a hash on two cores, the last waits under 10 s, well inside a
// client's 30 s.
const hashQueuePlaces = 320

// New makes a server over st. The hub receives the store's events.
func New(cfg Config, st Store, hub *Hub, fwd *Forwarder) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{cfg: cfg, store: st, hub: hub, fwd: fwd, log: cfg.Logger, hashing: newHashQueue(runtime.NumCPU(), cmp.Or(max(cfg.HashQueue, 0), hashQueuePlaces))}
}

func (s *Server) argon(ctx context.Context, f func()) error {
	return s.hashing.run(ctx, hostOf(observedAddr(ctx)), f)
}

// apply runs a command and turns a refusing Result into a status error.
func (s *Server) apply(ctx context.Context, cmd *statepb.Command) (*statepb.Result, error) {
	cmd.SessionId = sessionFrom(ctx).ID
	res, err := s.store.Apply(ctx, cmd)
	if err != nil {
		return nil, storeErr(err)
	}
	if res.Code != 0 {
		return nil, status.Error(codes.Code(res.Code), res.Message)
	}
	return res, nil
}

// barrier makes the reads that follow see every write acknowledged before
// the call, then refuses a session that was logged out by then.
func (s *Server) barrier(ctx context.Context) error {
	if err := s.store.ReadBarrier(ctx); err != nil {
		return storeErr(err)
	}
	if sess := sessionFrom(ctx); len(sess.ID) > 0 {
		revoked, err := s.store.FSM().Revoked(sess.ID)
		if err != nil {
			return storeErr(err)
		}
		if revoked {
			return status.Error(codes.Unauthenticated, store.LoggedOutMessage)
		}
	}
	return nil
}

func storeErr(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, context.Canceled) {
		// The caller went away (or cancelled): not the cluster's doing, and
		// the metrics should not count it as a slow answer.
		return status.Error(codes.Canceled, "the call was cancelled")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, "the cluster did not answer in time; try again")
	}
	return status.Errorf(codes.Unavailable, "the cluster cannot take this call right now: %v", err)
}

func invalid(err error) error { return status.Error(codes.InvalidArgument, err.Error()) }

// SignUp creates an account after checking every field.
func (s *Server) SignUp(ctx context.Context, req *api.SignUpRequest) (*api.SignUpResponse, error) {
	if err := ValidateUsername(req.Username); err != nil {
		return nil, invalid(err)
	}
	if err := ValidateRollNumber(req.RollNumber); err != nil {
		return nil, invalid(err)
	}
	if err := api.ValidatePassword(req.Password); err != nil {
		return nil, invalid(err)
	}
	// The account keeps the one spelling every look-up finds it by.
	username := api.NormalizeLoginID(req.Username)
	login := username + req.RollNumber
	// Counted before hashing, refused or not, so that one address cannot
	// make accounts (or probe which names are taken) without end.
	if _, err := s.reserve(ctx, "sign-ups", &statepb.Limit{
		Key: store.LimitKey("signup-addr", hostOf(observedAddr(ctx))), WindowNano: int64(time.Hour), Max: uint32(s.cfg.MaxSignUps)}); err != nil {
		return nil, err
	}
	var hash *statepb.PasswordHash
	if err := s.argon(ctx, func() { hash = HashPassword(req.Password) }); err != nil {
		return nil, err
	}
	acct := &statepb.Account{LoginId: login, Username: username, RollNumber: req.RollNumber, Password: hash}
	res, err := s.apply(ctx, &statepb.Command{Op: &statepb.Command_CreateAccount{CreateAccount: &statepb.CreateAccount{Account: acct}}})
	if err != nil {
		return nil, err
	}
	s.log.Info("account created", "login_id", res.LoginId)
	return &api.SignUpResponse{LoginId: res.LoginId}, nil
}

// LogIn checks the password and issues a token every coordinator accepts.
func (s *Server) LogIn(ctx context.Context, req *api.LogInRequest) (*api.LogInResponse, error) {
	if req.LoginId == "" || len(req.LoginId) > api.MaxLoginIDLen || len(req.Password) > MaxPasswordLen {
		return nil, status.Error(codes.Unauthenticated, "wrong login id or password")
	}
	login := api.NormalizeLoginID(req.LoginId)
	if len(login) > api.MaxLoginIDLen {
		return nil, status.Error(codes.Unauthenticated, "wrong login id or password")
	}
	addr := observedAddr(ctx)
	info, err := s.clusterInfo()
	if err != nil {
		return nil, err
	}
	// The attempt is counted before the password is hashed, in the log's
	// order, so parallel guesses cannot all pass a check made before any of
	// them was counted. A guesser elsewhere slows only himself, never the
	// owner; and one who fails slows neither the address's other people
	// (see loginLimits).
	device := CheckDeviceTicket(info.TokenKey, login, req.DeviceTicket, time.Now())
	limits := s.loginLimits(login, hostOf(addr), device)
	attempt, err := s.reserve(ctx, "log-ins", limits...)
	if err != nil {
		return nil, err
	}
	keys := make([][]byte, len(limits))
	for i, l := range limits {
		keys[i] = l.Key
	}
	// See accounts made through any coordinator.
	if err := s.barrier(ctx); err != nil {
		return nil, err
	}
	fsm := s.store.FSM()
	now := time.Now()
	acct, err := fsm.Account(login)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, storeErr(err)
	}
	var good bool
	if err := s.argon(ctx, func() {
		if acct.GetPassword() == nil {
			CheckPassword(dummyHash, req.Password)
			return
		}
		good = CheckPassword(acct.Password, req.Password)
	}); err != nil {
		s.unreserve(attempt, nil, keys...) // busy is not a guess
		return nil, err
	}
	if !good {
		loginFailures.Inc()
		s.log.Info("failed log-in", "login_id", login, "addr", addr)
		return nil, status.Error(codes.Unauthenticated, "wrong login id or password")
	}
	// The right password: this device's (or address's) count for the
	// account starts again, and the attempt does not count against the
	// address.
	s.unreserve(attempt, keys[:1], keys[1:]...)
	token, sess := MintToken(info.TokenKey, info.ClusterId, login, now.Add(s.cfg.SessionTTL))
	ticket := MintDeviceTicket(info.TokenKey, login, device, now.Add(DeviceTicketTTL))
	return &api.LogInResponse{Token: token, LoginId: login, ExpiresUnix: sess.Expires.Unix(), ObservedAddr: addr, DeviceTicket: ticket}, nil
}

// loginLimits are what a log-in attempt is counted against; the first is
// the one a right password clears. From a device that logged in to the
// account before (a valid device ticket): its failures count against that
// device alone, so neither the address's other people nor the account's
// owner elsewhere are slowed by it. From any other device: failures count
// against the account from this address (backing off), and against the
// address for all accounts (a guesser trying one password on many
// accounts) — which holds back only devices new to their accounts: the
// address's people who logged in there before go on with their tickets.
func (s *Server) loginLimits(login, ip string, device []byte) []*statepb.Limit {
	if device != nil {
		return []*statepb.Limit{{Key: store.LimitKey("login-device", login, string(device)),
			WindowNano: int64(LoginWindow), Max: uint32(s.cfg.MaxLoginFailures), Backoff: true}}
	}
	return []*statepb.Limit{
		{Key: store.LimitKey("login", login, ip), WindowNano: int64(LoginWindow), Max: uint32(s.cfg.MaxLoginFailures), Backoff: true},
		{Key: store.LimitKey("login-addr", ip), WindowNano: int64(time.Minute), Max: uint32(s.cfg.MaxAddrFailures), ReleasedOnSuccess: true},
	}
}

// clusterInfo is the cluster's id and token key, or Unavailable while the
// first leader has not written them.
func (s *Server) clusterInfo() (*statepb.InitCluster, error) {
	info, err := s.store.FSM().ClusterInfo()
	if err != nil {
		return nil, status.Error(codes.Unavailable, "the cluster is still starting; try again")
	}
	return info, nil
}

// LoginWindow is how long failed log-ins count against an account from one
// address.
const LoginWindow = 15 * time.Minute

// reserve counts an attempt against limits, atomically in the replicated
// log, before the expensive work; what says the attempt's time.
func (s *Server) reserve(ctx context.Context, what string, limits ...*statepb.Limit) (int64, error) {
	res, err := s.store.Apply(ctx, &statepb.Command{Op: &statepb.Command_Reserve{Reserve: &statepb.Reserve{Limits: limits}}})
	if err != nil {
		return 0, storeErr(err)
	}
	if codes.Code(res.Code) == codes.ResourceExhausted {
		// The retry time also goes as a RetryInfo, so clients wait it out
		// rather than ask again at once.
		st := status.Newf(codes.ResourceExhausted, "too many %s from your address; try again in %d seconds", what, res.Seq)
		if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Duration(res.Seq) * time.Second)}); err == nil {
			st = d
		}
		return 0, st.Err()
	}
	if res.Code != 0 {
		return 0, status.Error(codes.Code(res.Code), res.Message)
	}
	return int64(res.Seq), nil
}

// unreserve takes back an attempt that turned out well (or never ran):
// it is forgotten from forget, and clear is emptied. Best effort: a lost
// release only counts one attempt too many until the window passes.
func (s *Server) unreserve(attempt int64, clear [][]byte, forget ...[]byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rel := &statepb.Release{Forget: forget, AttemptUnixNano: attempt, Clear: clear}
	if _, err := s.store.Apply(ctx, &statepb.Command{Op: &statepb.Command_Release{Release: rel}}); err != nil {
		s.log.Warn("release a counted attempt", "err", err)
	}
}

// LogOut revokes the caller's session everywhere.
func (s *Server) LogOut(ctx context.Context, _ *api.LogOutRequest) (*api.LogOutResponse, error) {
	sess := sessionFrom(ctx)
	rev := &statepb.RevokeSession{SessionId: sess.ID, ExpiresUnixNano: sess.Expires.UnixNano()}
	if _, err := s.apply(ctx, &statepb.Command{Op: &statepb.Command_RevokeSession{RevokeSession: rev}}); err != nil {
		return nil, err
	}
	return &api.LogOutResponse{}, nil
}

// PublishKeys stores the caller's directory entry after checking that the
// identity key is signed by the libp2p key that the peer id names.
func (s *Server) PublishKeys(ctx context.Context, req *api.PublishKeysRequest) (*api.PublishKeysResponse, error) {
	login := sessionFrom(ctx).LoginID
	k := req.GetKeys()
	if k == nil {
		return nil, status.Error(codes.InvalidArgument, "no keys given")
	}
	if err := verifyKeys(login, k); err != nil {
		return nil, invalid(err)
	}
	// The state machine fills in the username and roll number from the
	// account as it applies the entry.
	entry := &api.Keys{
		LoginId: login,
		PeerId:  k.PeerId, Libp2PPublicKey: k.Libp2PPublicKey, IdentityKey: k.IdentityKey,
		// Direct addresses are not kept: they go end to end between
		// clients, so neither the cluster nor a stranger learns them.
		IdentitySignature: k.IdentitySignature, RelayAddrs: k.RelayAddrs,
	}
	if _, err := s.apply(ctx, &statepb.Command{Op: &statepb.Command_PublishKeys{PublishKeys: entry}}); err != nil {
		return nil, err
	}
	return &api.PublishKeysResponse{ObservedAddr: observedAddr(ctx)}, nil
}

func verifyKeys(login string, k *api.Keys) error {
	if len(k.IdentityKey) != 32 {
		return fmt.Errorf("identity key must be 32 bytes (X25519), not %d", len(k.IdentityKey))
	}
	pub, err := crypto.UnmarshalPublicKey(k.Libp2PPublicKey)
	if err != nil {
		return fmt.Errorf("libp2p public key: %w", err)
	}
	if pub.Type() != crypto.Ed25519 {
		return errors.New("libp2p key must be Ed25519")
	}
	id, err := p2ppeer.Decode(k.PeerId)
	if err != nil {
		return fmt.Errorf("peer id: %w", err)
	}
	if !id.MatchesPublicKey(pub) {
		return errors.New("peer id does not match the libp2p public key")
	}
	okSig, err := pub.Verify(api.IdentitySigningPayload(login, k.IdentityKey), k.IdentitySignature)
	if err != nil || !okSig {
		return errors.New("identity key signature does not verify")
	}
	if len(k.Addrs) > api.MaxAddrsPerKind || len(k.RelayAddrs) > api.MaxAddrsPerKind {
		return fmt.Errorf("at most %d addresses of each kind", api.MaxAddrsPerKind)
	}
	for _, a := range append(append([]string{}, k.Addrs...), k.RelayAddrs...) {
		if len(a) > api.MaxAddrLen {
			return fmt.Errorf("address longer than %d bytes", api.MaxAddrLen)
		}
		if _, err := ma.NewMultiaddr(a); err != nil {
			return fmt.Errorf("address %q: %w", a, err)
		}
	}
	for _, a := range k.RelayAddrs {
		if !strings.Contains(a, "/p2p-circuit") {
			return fmt.Errorf("relay address %q is no relay circuit", a)
		}
	}
	return nil
}

// LookUp finds accounts by login id, username or roll number.
func (s *Server) LookUp(ctx context.Context, req *api.LookUpRequest) (*api.LookUpResponse, error) {
	q := strings.TrimSpace(req.Query)
	if q == "" || len(q) > api.MaxLoginIDLen {
		return nil, status.Error(codes.InvalidArgument, "give a login id, a username or a roll number")
	}
	if err := s.barrier(ctx); err != nil {
		return nil, err
	}
	fsm := s.store.FSM()
	q = api.NormalizeLoginID(q)
	// An exact login id names one person: answered alone, so that no
	// number of accounts whose username or roll number equals it can
	// crowd that person out of the answer.
	var logins []string
	exact := false
	if _, err := fsm.Account(q); err == nil {
		logins, exact = []string{q}, true
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, storeErr(err)
	} else if logins, err = fsm.FindAccounts(q); err != nil {
		return nil, storeErr(err)
	}
	resp := &api.LookUpResponse{}
	size := 0
	info, err := s.clusterInfo()
	if err != nil {
		return nil, err
	}
	caller, expires := sessionFrom(ctx).LoginID, time.Now().Add(watchTicketTTL)
	for _, l := range logins {
		if len(resp.Matches) == api.MaxLookUpMatches {
			break
		}
		k, err := fsm.Keys(l)
		if errors.Is(err, store.ErrNotFound) {
			acct, err := fsm.Account(l)
			if err != nil {
				return nil, storeErr(err)
			}
			k = &api.Keys{LoginId: l, Username: acct.Username, RollNumber: acct.RollNumber}
		} else if err != nil {
			return nil, storeErr(err)
		}
		// Entries written before the directory's bounds are cut to them,
		// and before it kept only circuits lose their direct addresses.
		k.Addrs = nil
		k.RelayAddrs = k.RelayAddrs[:min(len(k.RelayAddrs), api.MaxAddrsPerKind)]
		if size += proto.Size(k); size > maxLookUpBytes {
			break
		}
		resp.Matches = append(resp.Matches, k)
		if exact { // only someone named by their login id may be watched
			resp.WatchTickets = append(resp.WatchTickets, MintWatchTicket(info.TokenKey, caller, l, expires))
		}
	}
	return resp, nil
}

// maxLookUpBytes bounds a LookUp answer well under a client's 2 MiB
// message limit (20 full entries are about 170 KiB).
const maxLookUpBytes = 512 << 10

func (s *Server) groupOp(ctx context.Context, kind statepb.GroupOp_Kind, name string) (*api.GroupResponse, error) {
	if err := ValidateGroupName(name); err != nil {
		return nil, invalid(err)
	}
	op := &statepb.GroupOp{Kind: kind, Name: name, LoginId: sessionFrom(ctx).LoginID, MaxCreated: s.cfg.MaxGroupsCreated, MaxJoined: s.cfg.MaxGroupsJoined}
	res, err := s.apply(ctx, &statepb.Command{Op: &statepb.Command_Group{Group: op}})
	if err != nil {
		return nil, err
	}
	return &api.GroupResponse{Name: res.Name}, nil
}

// CreateGroup makes a group with the caller as its first member.
func (s *Server) CreateGroup(ctx context.Context, req *api.GroupRequest) (*api.GroupResponse, error) {
	return s.groupOp(ctx, statepb.GroupOp_CREATE, req.Name)
}

// JoinGroup adds the caller to an existing group.
func (s *Server) JoinGroup(ctx context.Context, req *api.GroupRequest) (*api.GroupResponse, error) {
	return s.groupOp(ctx, statepb.GroupOp_JOIN, req.Name)
}

// LeaveGroup removes the caller from a group.
func (s *Server) LeaveGroup(ctx context.Context, req *api.GroupRequest) (*api.GroupResponse, error) {
	return s.groupOp(ctx, statepb.GroupOp_LEAVE, req.Name)
}

// ListGroups lists every group with its member count.
func (s *Server) ListGroups(ctx context.Context, req *api.ListGroupsRequest) (*api.ListGroupsResponse, error) {
	if err := s.barrier(ctx); err != nil {
		return nil, err
	}
	after, size, err := groupPage(req)
	if err != nil {
		return nil, err
	}
	groups, next, err := s.store.FSM().Groups(after, size)
	return groupList(groups, next, err)
}

// MyGroups lists the caller's groups.
func (s *Server) MyGroups(ctx context.Context, req *api.ListGroupsRequest) (*api.ListGroupsResponse, error) {
	if err := s.barrier(ctx); err != nil {
		return nil, err
	}
	after, size, err := groupPage(req)
	if err != nil {
		return nil, err
	}
	groups, next, err := s.store.FSM().MyGroups(sessionFrom(ctx).LoginID, after, size)
	return groupList(groups, next, err)
}

// MaxGroupPage is the most groups one ListGroups or MyGroups answer holds.
const MaxGroupPage = 500

// groupPage is the page a listing asks for: after which name, and how
// many (within MaxGroupPage).
func groupPage(req *api.ListGroupsRequest) (string, int, error) {
	if len(req.PageToken) > MaxNameLen*4 {
		return "", 0, status.Error(codes.InvalidArgument, "that page token is not one this cluster gave")
	}
	if req.PageSize == 0 || req.PageSize > MaxGroupPage {
		return req.PageToken, MaxGroupPage, nil
	}
	return req.PageToken, int(req.PageSize), nil
}

func groupList(groups []*statepb.Group, next string, err error) (*api.ListGroupsResponse, error) {
	if err != nil {
		return nil, storeErr(err)
	}
	resp := &api.ListGroupsResponse{NextPageToken: next}
	for _, g := range groups {
		resp.Groups = append(resp.Groups, &api.GroupInfo{Name: g.Name, Members: g.Members})
	}
	return resp, nil
}

// Members lists a group's members.
func (s *Server) Members(ctx context.Context, req *api.GroupRequest) (*api.MembersResponse, error) {
	if err := ValidateGroupName(req.Name); err != nil {
		return nil, invalid(err)
	}
	if err := s.barrier(ctx); err != nil {
		return nil, err
	}
	g, members, err := s.store.FSM().Members(req.Name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "there is no group %q", req.Name)
	}
	if err != nil {
		return nil, storeErr(err)
	}
	return &api.MembersResponse{Name: g.Name, LoginIds: members}, nil
}

// PutMail leaves an envelope for an offline account.
func (s *Server) PutMail(ctx context.Context, req *api.PutMailRequest) (*api.PutMailResponse, error) {
	if len(req.Envelope) == 0 {
		return nil, status.Error(codes.InvalidArgument, "the envelope is empty")
	}
	if len(req.Envelope) > s.cfg.MailMaxBytes {
		return nil, status.Errorf(codes.InvalidArgument, "the envelope is %d bytes; the limit is %d", len(req.Envelope), s.cfg.MailMaxBytes)
	}
	to := api.NormalizeLoginID(req.To)
	if to == "" || len(req.To) > api.MaxLoginIDLen || len(to) > api.MaxLoginIDLen {
		return nil, status.Error(codes.InvalidArgument, "give the recipient's login id")
	}
	put := &statepb.PutMail{
		From: sessionFrom(ctx).LoginID, To: to, Envelope: req.Envelope,
		MaxCount: s.cfg.MailboxMaxCount, MaxBytes: s.cfg.MailboxMaxBytes,
		MaxCountPerSender: s.cfg.SenderMaxCount, MaxBytesPerSender: s.cfg.SenderMaxBytes,
	}
	res, err := s.apply(ctx, &statepb.Command{Op: &statepb.Command_PutMail{PutMail: put}})
	if err != nil {
		return nil, err
	}
	return &api.PutMailResponse{Seq: res.Seq}, nil
}

// fetchMailMaxBytes bounds one FetchMail answer below the gRPC message
// limit: a hundred envelopes of files' chunks would be 100 MiB.
const fetchMailMaxBytes = api.MaxMessageBytes - 64<<10

// FetchMail returns the caller's waiting envelopes in order.
func (s *Server) FetchMail(ctx context.Context, req *api.FetchMailRequest) (*api.FetchMailResponse, error) {
	limit := int(req.Limit)
	if limit <= 0 || limit > 100 {
		limit = 100
	}
	if err := s.barrier(ctx); err != nil {
		return nil, err
	}
	mail, err := s.store.FSM().Mail(sessionFrom(ctx).LoginID, req.AfterSeq, limit, fetchMailMaxBytes)
	if err != nil {
		return nil, storeErr(err)
	}
	return &api.FetchMailResponse{Mail: mail}, nil
}

// AckMail deletes delivered envelopes.
func (s *Server) AckMail(ctx context.Context, req *api.AckMailRequest) (*api.AckMailResponse, error) {
	ack := &statepb.AckMail{LoginId: sessionFrom(ctx).LoginID, UpToSeq: req.UpToSeq}
	if _, err := s.apply(ctx, &statepb.Command{Op: &statepb.Command_AckMail{AckMail: ack}}); err != nil {
		return nil, err
	}
	return &api.AckMailResponse{}, nil
}

// Events streams the caller's events until it goes away. The response
// headers are sent once the subscription is in place.
func (s *Server) Events(req *api.EventsRequest, stream api.Coordinator_EventsServer) error {
	if len(req.Tickets) > api.MaxWatch {
		return status.Errorf(codes.InvalidArgument, "watch at most %d accounts", api.MaxWatch)
	}
	if err := s.barrier(stream.Context()); err != nil {
		return err
	}
	sess := sessionFrom(stream.Context())
	info, err := s.clusterInfo()
	if err != nil {
		return err
	}
	// Only accounts the caller looked up (and so holds a ticket for) are
	// watched: nobody follows a stranger's comings and goings.
	var watch []string
	now := time.Now()
	for _, t := range req.Tickets {
		if CheckWatchTicket(info.TokenKey, sess.LoginID, t.LoginId, t.Ticket, now) {
			watch = append(watch, t.LoginId)
		}
	}
	sub, err := s.hub.Subscribe(sess.LoginID, string(sess.ID), watch)
	if err != nil {
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	defer s.hub.Unsubscribe(sub)
	// Response headers now, before any event: a client that waits for them
	// knows every later change will reach it, so it can fetch what is
	// already waiting without missing what arrives meanwhile.
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	// The stream lasts no longer than its session: it ends at the token's
	// expiry, and at a log-out anywhere in the cluster — told by the hub as
	// this coordinator applies it, with a slow check of the state behind
	// that (a log-out applied while this member caught up from a snapshot
	// publishes no event). Polling every stream every few seconds instead
	// cost the coordinators 1,250 reads a second with 2,500 online
	// (BenchmarkManyOnline).
	expiry := time.NewTimer(time.Until(sess.Expires))
	defer expiry.Stop()
	revocation := time.NewTicker(revocationBackstop)
	defer revocation.Stop()
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-expiry.C:
			return status.Error(codes.Unauthenticated, ErrExpiredToken.Error())
		case <-revocation.C:
			if gone, err := s.store.FSM().Revoked(sess.ID); err == nil && gone {
				return status.Error(codes.Unauthenticated, store.LoggedOutMessage)
			}
		case ev, ok := <-sub.C:
			if !ok && s.hub.Revoked(sub) {
				return status.Error(codes.Unauthenticated, store.LoggedOutMessage)
			}
			if !ok {
				return status.Error(codes.Unavailable, "the event stream fell behind; reconnect and fetch your mail")
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}

// revocationBackstop is how often an Events stream checks the state for
// a log-out the hub did not tell it of.
const revocationBackstop = time.Minute

// Relays lists the coordinators' relay addresses.
func (s *Server) Relays(ctx context.Context, _ *api.RelaysRequest) (*api.RelaysResponse, error) {
	nodes, err := s.store.FSM().Nodes()
	if err != nil {
		return nil, storeErr(err)
	}
	resp := &api.RelaysResponse{}
	for _, n := range nodes {
		if n.PeerId != "" && len(n.RelayAddrs) > 0 {
			resp.Relays = append(resp.Relays, &api.Relay{CoordinatorId: n.Id, PeerId: n.PeerId, Addrs: n.RelayAddrs})
		}
	}
	return resp, nil
}

// observedAddr is the caller's address as this coordinator sees it (the
// original client's, when a balancer sent a PROXY protocol header).
func observedAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
