package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/coord/store/statepb"
)

// Key layout in badger. Names are case-folded where the issue says they are
// case-insensitive; login ids are always lower case.
const (
	keyApplied  = "meta/applied"   // uint64: last Raft index applied
	keyCluster  = "meta/cluster"   // statepb.InitCluster
	prefAccount = "acct/"          // acct/<login> → Account
	prefUser    = "user/"          // user/<username> → login
	prefRoll    = "roll/"          // roll/<roll>/<login> → ""
	prefKeys    = "keys/"          // keys/<login> → api.Keys
	prefGroup   = "grp/"           // grp/<folded name> → Group
	prefGMember = "gmem/"          // gmem/<folded name>/<login> → ""
	prefMyGroup = "mygrp/"         // mygrp/<login>/<folded name> → ""
	prefMailbox = "mbox/"          // mbox/<login> → MailBox
	prefMail    = "mail/"          // mail/<login>/<seq BE> → api.Mail
	prefMailBy  = "mboxfrom/"      // mboxfrom/<to>/<from> → MailBox (count, bytes from one sender)
	prefGrpBy   = "grpby/"         // grpby/<login> → uint64 groups created
	prefPeer    = "peer/"          // peer/<libp2p peer id> → login (published in the directory)
	prefRevoked = "rev/"           // rev/<session id> → expiry BE
	prefNode    = "node/"          // node/<id> → Node
	prefRequest = "req/"           // req/<request id> → AppliedRequest
	prefReqTime = "reqt/"          // reqt/<time BE>/<request id> → ""
	prefRevTime = "revt/"          // revt/<time BE>/<session id> → ""
	requestTTL  = 10 * time.Minute // a retried command is recognised this long
	pruneBatch  = 64               // expired entries removed per applied command
)

// LoggedOutMessage is the answer to a call made with a logged-out session.
const LoggedOutMessage = "you logged out of this session; log in again"

// Event is a change the state machine applied that connected clients may
// want to hear about. Exactly one field is set.
type Event struct {
	Mail  *MailEvent
	Group *GroupEvent
	Keys  *api.Keys
	// Revoked names a session logged out: its streams end at once.
	Revoked []byte
}

// MailEvent says new mail is waiting for To.
type MailEvent struct {
	To   string
	Seq  uint64
	From string
}

// GroupEvent says LoginID created, joined or left the group Name.
type GroupEvent struct {
	Name    string
	LoginID string
	Change  string
}

// applyOutcome is what ApplyBatch hands back to the Raft future.
type applyOutcome struct {
	result *statepb.Result
	err    error
}

// FSM is the coordinator state machine: it applies committed commands to
// badger. Writes go only through Apply; reads go to badger through a cache
// that each commit invalidates (readCache).
type FSM struct {
	db      *badger.DB
	log     *slog.Logger
	publish func(Event)
	// onApplied, if set, hears the applied index after each commit.
	onApplied func(uint64)
	// sinceSnapshot counts the bytes of log entries applied since the
	// last snapshot began (see Store.snapshotBySize).
	sinceSnapshot atomic.Int64
	// batchTime is the latest command time in the batch being applied
	// (only the Raft FSM goroutine touches it).
	batchTime int64
	// cache holds recent point reads and FindAccounts answers.
	cache *readCache
}

// NewFSM wraps an open badger database. publish, if not nil, is called after
// each batch commits with the events it produced, in order.
func NewFSM(db *badger.DB, log *slog.Logger, publish func(Event)) *FSM {
	if publish == nil {
		publish = func(Event) {}
	}
	return &FSM{db: db, log: log, publish: publish, cache: newReadCache()}
}

// Apply implements raft.FSM for single entries.
func (f *FSM) Apply(l *raft.Log) interface{} {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch implements raft.BatchingFSM: one badger transaction for a whole
// batch of committed entries, which is what lets writes scale with load. A
// batch too big for one transaction is applied an entry at a time.
func (f *FSM) ApplyBatch(logs []*raft.Log) []interface{} {
	var size int64
	for _, l := range logs {
		size += int64(len(l.Data))
	}
	f.sinceSnapshot.Add(size)
	out, events, written, err := f.applyInTxn(logs)
	if errors.Is(err, badger.ErrTxnTooBig) && len(logs) > 1 {
		out, events, written = make([]interface{}, 0, len(logs)), nil, nil
		for _, l := range logs {
			o, evs, w, err := f.applyInTxn([]*raft.Log{l})
			if err != nil {
				panic(fmt.Sprintf("apply raft index %d: %v", l.Index, err))
			}
			out = append(out, o[0])
			events = append(events, evs...)
			written = append(written, w...)
		}
		err = nil
	}
	if err != nil {
		// The disk failed under us; a replica that cannot apply must stop.
		panic(fmt.Sprintf("apply raft entries: %v", err))
	}
	// Before anyone can learn of these entries (events, the applied index
	// that reads wait for), no cached read of what they changed remains.
	f.cache.drop(written)
	for _, e := range events {
		f.publish(e)
	}
	if f.onApplied != nil {
		f.onApplied(logs[len(logs)-1].Index)
	}
	return out
}

// applyInTxn applies logs in one transaction and commits it; it returns
// the outcomes, the events and the keys the transaction wrote.
func (f *FSM) applyInTxn(logs []*raft.Log) ([]interface{}, []Event, []string, error) {
	txn := &writeTxn{Txn: f.db.NewTransaction(true)}
	defer txn.Discard()
	applied, err := readApplied(txn)
	if err != nil {
		return nil, nil, nil, err
	}
	out := make([]interface{}, len(logs))
	var events []Event
	f.batchTime = 0
	for i, l := range logs {
		if l.Index <= applied {
			// Replayed after a restart: badger already holds its effect.
			out[i] = &applyOutcome{result: ok()}
			continue
		}
		res, evs, err := f.applyOne(txn, l)
		if err != nil {
			return nil, nil, nil, err
		}
		out[i] = &applyOutcome{result: res}
		events = append(events, evs...)
		applied = l.Index
	}
	// Expired entries go once per batch: an iterator over a transaction
	// with pending writes sorts them, so pruning per entry would cost the
	// square of the batch size.
	if f.batchTime > 0 {
		if err := f.prune(txn, f.batchTime); err != nil {
			return nil, nil, nil, err
		}
	}
	if err := txn.Set([]byte(keyApplied), u64(applied)); err != nil {
		return nil, nil, nil, err
	}
	return out, events, txn.written, txn.Commit()
}

func (f *FSM) applyOne(txn *writeTxn, l *raft.Log) (*statepb.Result, []Event, error) {
	if l.Type != raft.LogCommand {
		return &statepb.Result{}, nil, nil
	}
	var cmd statepb.Command
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		// A corrupt entry cannot be applied by anyone; answer it and go on.
		return fail(codes.Internal, "corrupt command at index %d", l.Index), nil, nil
	}
	now := cmd.GetTimeUnixNano()
	if len(cmd.RequestId) > 0 {
		var seen statepb.AppliedRequest
		found, err := getProto(txn, prefRequest+string(cmd.RequestId), &seen)
		if err != nil {
			return nil, nil, err
		}
		if found {
			return seen.Result, nil, nil
		}
	}
	var res *statepb.Result
	var evs []Event
	var err error
	revoked := false
	if len(cmd.SessionId) > 0 {
		if revoked, err = has(txn, prefRevoked+string(cmd.SessionId)); err != nil {
			return nil, nil, err
		}
	}
	if revoked {
		res = fail(codes.Unauthenticated, LoggedOutMessage)
	} else {
		res, evs, err = f.dispatch(txn, &cmd)
	}
	if err != nil {
		return nil, nil, err
	}
	if len(cmd.RequestId) > 0 {
		rec := &statepb.AppliedRequest{Result: res, TimeUnixNano: now}
		if err := setProto(txn, prefRequest+string(cmd.RequestId), rec); err != nil {
			return nil, nil, err
		}
		if err := txn.Set([]byte(prefReqTime+string(u64(uint64(now)))+"/"+string(cmd.RequestId)), nil); err != nil {
			return nil, nil, err
		}
	}
	if now > f.batchTime {
		f.batchTime = now
	}
	return res, evs, nil
}

func (f *FSM) dispatch(txn *writeTxn, cmd *statepb.Command) (*statepb.Result, []Event, error) {
	now := cmd.GetTimeUnixNano()
	switch op := cmd.Op.(type) {
	case *statepb.Command_InitCluster:
		return f.initCluster(txn, op.InitCluster)
	case *statepb.Command_CreateAccount:
		return f.createAccount(txn, op.CreateAccount.GetAccount(), now)
	case *statepb.Command_RevokeSession:
		return f.revokeSession(txn, op.RevokeSession)
	case *statepb.Command_LoginFailed:
		return ok(), nil, nil // older versions' failure count; Reserve replaced it
	case *statepb.Command_Reserve:
		return f.reserve(txn, op.Reserve, now)
	case *statepb.Command_Release:
		return f.release(txn, op.Release)
	case *statepb.Command_PublishKeys:
		return f.publishKeys(txn, op.PublishKeys, now)
	case *statepb.Command_Group:
		return f.group(txn, op.Group, now)
	case *statepb.Command_PutMail:
		return f.putMail(txn, op.PutMail, now)
	case *statepb.Command_AckMail:
		return f.ackMail(txn, op.AckMail)
	case *statepb.Command_RegisterNode:
		return ok(), nil, setProto(txn, prefNode+op.RegisterNode.GetId(), op.RegisterNode)
	case *statepb.Command_RemoveNode:
		return ok(), nil, txn.Delete([]byte(prefNode + op.RemoveNode.GetId()))
	default:
		return fail(codes.InvalidArgument, "unknown command"), nil, nil
	}
}

func (f *FSM) initCluster(txn *writeTxn, c *statepb.InitCluster) (*statepb.Result, []Event, error) {
	var have statepb.InitCluster
	found, err := getProto(txn, keyCluster, &have)
	if err != nil || found {
		return fail(codes.AlreadyExists, "cluster already initialised"), nil, err
	}
	if len(c.GetClusterId()) == 0 || len(c.GetTokenKey()) < 32 {
		return fail(codes.InvalidArgument, "cluster id and a 32-byte token key are required"), nil, nil
	}
	return ok(), nil, setProto(txn, keyCluster, c)
}

func (f *FSM) createAccount(txn *writeTxn, a *statepb.Account, now int64) (*statepb.Result, []Event, error) {
	if a == nil || a.LoginId == "" || a.Username == "" || a.RollNumber == "" || a.Password == nil {
		return fail(codes.InvalidArgument, "incomplete account"), nil, nil
	}
	user := prefUser + strings.ToLower(a.Username)
	if exists, err := has(txn, user); err != nil || exists {
		return fail(codes.AlreadyExists, "username %q is taken", a.Username), nil, err
	}
	if exists, err := has(txn, prefAccount+a.LoginId); err != nil || exists {
		return fail(codes.AlreadyExists, "login id %q is taken", a.LoginId), nil, err
	}
	a.CreatedUnixNano = now
	if err := setProto(txn, prefAccount+a.LoginId, a); err != nil {
		return nil, nil, err
	}
	if err := txn.Set([]byte(user), []byte(a.LoginId)); err != nil {
		return nil, nil, err
	}
	if err := txn.Set([]byte(prefRoll+strings.ToLower(a.RollNumber)+"/"+a.LoginId), nil); err != nil {
		return nil, nil, err
	}
	return &statepb.Result{LoginId: a.LoginId}, nil, nil
}

func (f *FSM) revokeSession(txn *writeTxn, r *statepb.RevokeSession) (*statepb.Result, []Event, error) {
	if len(r.GetSessionId()) == 0 {
		return fail(codes.InvalidArgument, "no session"), nil, nil
	}
	exp := u64(uint64(r.GetExpiresUnixNano()))
	if err := txn.Set([]byte(prefRevoked+string(r.SessionId)), exp); err != nil {
		return nil, nil, err
	}
	return ok(), []Event{{Revoked: r.SessionId}}, txn.Set([]byte(prefRevTime+string(exp)+"/"+string(r.SessionId)), nil)
}

func (f *FSM) publishKeys(txn *writeTxn, k *api.Keys, now int64) (*statepb.Result, []Event, error) {
	var acct statepb.Account
	if found, err := getProto(txn, prefAccount+k.GetLoginId(), &acct); err != nil || !found {
		return fail(codes.NotFound, "no account %q", k.GetLoginId()), nil, err
	}
	k.Username, k.RollNumber = acct.Username, acct.RollNumber
	k.UpdatedUnix = now / int64(time.Second)
	var before api.Keys
	if found, err := getProto(txn, prefKeys+k.LoginId, &before); err != nil {
		return nil, nil, err
	} else if found && before.PeerId != "" && before.PeerId != k.PeerId {
		if err := txn.Delete([]byte(prefPeer + before.PeerId)); err != nil {
			return nil, nil, err
		}
	}
	if err := setProto(txn, prefKeys+k.LoginId, k); err != nil {
		return nil, nil, err
	}
	// The relays admit the peers people published (relay ACL).
	if err := txn.Set([]byte(prefPeer+k.PeerId), []byte(k.LoginId)); err != nil {
		return nil, nil, err
	}
	return ok(), []Event{{Keys: k}}, nil
}

func (f *FSM) group(txn *writeTxn, g *statepb.GroupOp, now int64) (*statepb.Result, []Event, error) {
	folded := FoldGroupName(g.GetName())
	if folded == "" || g.GetLoginId() == "" {
		return fail(codes.InvalidArgument, "group name and member are required"), nil, nil
	}
	// '/' ends the name in member keys (gmem/<name>/<login>): a name that
	// held it could list members of another group.
	if strings.ContainsAny(folded, "/\x00") || strings.ContainsAny(g.GetLoginId(), "/\x00") {
		return fail(codes.InvalidArgument, "group names and login ids cannot hold '/'"), nil, nil
	}
	var rec statepb.Group
	found, err := getProto(txn, prefGroup+folded, &rec)
	if err != nil {
		return nil, nil, err
	}
	member := prefGMember + folded + "/" + g.LoginId
	mine := prefMyGroup + g.LoginId + "/" + folded
	isMember, err := has(txn, member)
	if err != nil {
		return nil, nil, err
	}
	var change string
	switch g.GetKind() {
	case statepb.GroupOp_CREATE:
		if found {
			return fail(codes.AlreadyExists, "group %q already exists", rec.Name), nil, nil
		}
		created, err := getU64(txn, prefGrpBy+g.LoginId)
		if err != nil {
			return nil, nil, err
		}
		if g.MaxCreated > 0 && created >= uint64(g.MaxCreated) {
			return fail(codes.ResourceExhausted, "you have created %d groups, the most one person may", created), nil, nil
		}
		if err := txn.Set([]byte(prefGrpBy+g.LoginId), u64(created+1)); err != nil {
			return nil, nil, err
		}
		rec = statepb.Group{Name: g.Name, CreatedBy: g.LoginId, CreatedUnixNano: now}
		change = "created"
		fallthrough
	case statepb.GroupOp_JOIN:
		if change == "" {
			if !found {
				return fail(codes.NotFound, "there is no group %q", g.Name), nil, nil
			}
			if isMember {
				return fail(codes.AlreadyExists, "you are already a member of %q", rec.Name), nil, nil
			}
			change = "joined"
		}
		if g.MaxJoined > 0 {
			if n := len(keysUnder(txn, prefMyGroup+g.LoginId+"/", int(g.MaxJoined))); n >= int(g.MaxJoined) {
				return fail(codes.ResourceExhausted, "you are in %d groups, the most one person may be in; leave one first", n), nil, nil
			}
		}
		rec.Members++
		if err := txn.Set([]byte(member), nil); err != nil {
			return nil, nil, err
		}
		if err := txn.Set([]byte(mine), nil); err != nil {
			return nil, nil, err
		}
	case statepb.GroupOp_LEAVE:
		if !found {
			return fail(codes.NotFound, "there is no group %q", g.Name), nil, nil
		}
		if !isMember {
			return fail(codes.FailedPrecondition, "you are not a member of %q", rec.Name), nil, nil
		}
		rec.Members--
		change = "left"
		if err := txn.Delete([]byte(member)); err != nil {
			return nil, nil, err
		}
		if err := txn.Delete([]byte(mine)); err != nil {
			return nil, nil, err
		}
	default:
		return fail(codes.InvalidArgument, "unknown group operation"), nil, nil
	}
	if err := setProto(txn, prefGroup+folded, &rec); err != nil {
		return nil, nil, err
	}
	ev := Event{Group: &GroupEvent{Name: rec.Name, LoginID: g.LoginId, Change: change}}
	return &statepb.Result{Name: rec.Name}, []Event{ev}, nil
}

func (f *FSM) putMail(txn *writeTxn, m *statepb.PutMail, now int64) (*statepb.Result, []Event, error) {
	if exists, err := has(txn, prefAccount+m.GetTo()); err != nil || !exists {
		return fail(codes.NotFound, "no account %q", m.GetTo()), nil, err
	}
	var box statepb.MailBox
	if _, err := getProto(txn, prefMailbox+m.To, &box); err != nil {
		return nil, nil, err
	}
	size := uint64(len(m.Envelope))
	if (m.MaxCount > 0 && box.Count+1 > m.MaxCount) || (m.MaxBytes > 0 && box.Bytes+size > m.MaxBytes) {
		return fail(codes.ResourceExhausted, "the mailbox of %s is full (%d messages, %d bytes waiting)", m.To, box.Count, box.Bytes), nil, nil
	}
	// Each sender has a share, so that one cannot fill the box for all.
	var mine statepb.MailBox
	byKey := shareKey(m.To, m.From)
	if _, err := getProto(txn, byKey, &mine); err != nil {
		return nil, nil, err
	}
	if (m.MaxCountPerSender > 0 && mine.Count+1 > m.MaxCountPerSender) || (m.MaxBytesPerSender > 0 && mine.Bytes+size > m.MaxBytesPerSender) {
		return fail(codes.ResourceExhausted, "you have filled your share of the mailbox of %s (%d messages, %d bytes from you wait there)", m.To, mine.Count, mine.Bytes), nil, nil
	}
	mine.Count++
	mine.Bytes += size
	if err := setProto(txn, byKey, &mine); err != nil {
		return nil, nil, err
	}
	box.NextSeq++
	box.Count++
	box.Bytes += size
	mail := &api.Mail{Seq: box.NextSeq, From: m.From, Envelope: m.Envelope, ReceivedUnixNano: now}
	if err := setProto(txn, mailKey(m.To, box.NextSeq), mail); err != nil {
		return nil, nil, err
	}
	if err := setProto(txn, prefMailbox+m.To, &box); err != nil {
		return nil, nil, err
	}
	ev := Event{Mail: &MailEvent{To: m.To, Seq: box.NextSeq, From: m.From}}
	return &statepb.Result{Seq: box.NextSeq}, []Event{ev}, nil
}

func (f *FSM) ackMail(txn *writeTxn, a *statepb.AckMail) (*statepb.Result, []Event, error) {
	var box statepb.MailBox
	if _, err := getProto(txn, prefMailbox+a.GetLoginId(), &box); err != nil {
		return nil, nil, err
	}
	prefix := []byte(prefMail + a.GetLoginId() + "/")
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	var doomed [][]byte
	senders := map[string][]uint64{}
	for it.Rewind(); it.Valid(); it.Next() {
		key := it.Item().KeyCopy(nil)
		if binary.BigEndian.Uint64(key[len(prefix):]) > a.UpToSeq {
			break
		}
		var m api.Mail
		if err := it.Item().Value(func(v []byte) error { return proto.Unmarshal(v, &m) }); err != nil {
			it.Close()
			return nil, nil, err
		}
		box.Count--
		box.Bytes -= uint64(len(m.Envelope))
		doomed = append(doomed, key)
		senders[m.From] = append(senders[m.From], uint64(len(m.Envelope)))
	}
	it.Close()
	for from, sizes := range senders {
		if err := f.releaseShare(txn, a.GetLoginId(), from, sizes); err != nil {
			return nil, nil, err
		}
	}
	for _, k := range doomed {
		if err := txn.Delete(k); err != nil {
			return nil, nil, err
		}
	}
	if len(doomed) == 0 {
		return ok(), nil, nil
	}
	return ok(), nil, setProto(txn, prefMailbox+a.LoginId, &box)
}

// shareKey holds what from has waiting in to's mailbox.
func shareKey(to, from string) string { return prefMailBy + to + "/" + from }

// releaseShare gives a sender's share back as its mail is acknowledged
// (mail stored before shares existed has none to give back).
func (f *FSM) releaseShare(txn *writeTxn, to, from string, sizes []uint64) error {
	key := shareKey(to, from)
	var mine statepb.MailBox
	found, err := getProto(txn, key, &mine)
	if err != nil || !found {
		return err
	}
	for _, n := range sizes {
		if mine.Count > 0 {
			mine.Count--
		}
		mine.Bytes -= min(mine.Bytes, n)
	}
	if mine.Count == 0 {
		return txn.Delete([]byte(key))
	}
	return setProto(txn, key, &mine)
}

func getU64(txn getter, key string) (uint64, error) {
	item, err := txn.Get([]byte(key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	v, err := item.ValueCopy(nil)
	if err != nil || len(v) != 8 {
		return 0, err
	}
	return binary.BigEndian.Uint64(v), nil
}

// prune removes retry records, revocations and counted attempts whose
// time has passed.
func (f *FSM) prune(txn *writeTxn, now int64) error {
	if err := f.pruneIndex(txn, prefReqTime, prefRequest, now-int64(requestTTL)); err != nil {
		return err
	}
	if err := f.pruneIndex(txn, prefRevTime, prefRevoked, now); err != nil {
		return err
	}
	return f.pruneLimits(txn, now)
}

func (f *FSM) pruneIndex(txn *writeTxn, index, target string, before int64) error {
	for _, e := range expired(txn, index, before) {
		if err := txn.Delete(e.key); err != nil {
			return err
		}
		if err := txn.Delete([]byte(target + e.names)); err != nil {
			return err
		}
	}
	return nil
}

// expiredEntry is one entry of a time index (<index><time BE>/<names>)
// whose time has come.
type expiredEntry struct {
	key   []byte
	names string
}

// expired lists up to pruneBatch entries of a time index at or before
// before, oldest first.
func expired(txn *writeTxn, index string, before int64) []expiredEntry {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(index)})
	defer it.Close()
	var out []expiredEntry
	for it.Rewind(); it.Valid() && len(out) < pruneBatch; it.Next() {
		key := it.Item().KeyCopy(nil)
		rest := key[len(index):]
		if len(rest) < 9 || int64(binary.BigEndian.Uint64(rest[:8])) > before {
			break
		}
		out = append(out, expiredEntry{key: key, names: string(rest[9:])})
	}
	return out
}

// keysUnder lists up to most keys under prefix.
func keysUnder(txn *writeTxn, prefix string, most int) [][]byte {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix)})
	defer it.Close()
	var out [][]byte
	for it.Rewind(); it.Valid() && len(out) < most; it.Next() {
		out = append(out, it.Item().KeyCopy(nil))
	}
	return out
}

// Snapshot implements raft.FSM. The snapshot is a badger backup stream taken
// when Persist runs; it may include entries applied after this call, which is
// safe because the applied index travels inside it and replays skip them.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.sinceSnapshot.Store(0)
	return &snapshot{db: f.db}, nil
}

// Restore implements raft.FSM: it replaces all state with the snapshot.
func (f *FSM) Restore(r io.ReadCloser) error {
	defer r.Close()
	if err := f.db.DropAll(); err != nil {
		return fmt.Errorf("restore snapshot: clear state: %w", err)
	}
	if err := f.db.Load(r, 256); err != nil {
		return fmt.Errorf("restore snapshot: load: %w", err)
	}
	f.cache.clear()
	if idx, err := f.AppliedIndex(); err == nil && f.onApplied != nil {
		f.onApplied(idx)
	}
	return nil
}

type snapshot struct{ db *badger.DB }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.db.Backup(sink, 0); err != nil {
		sink.Cancel()
		return fmt.Errorf("write snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() {}

// FoldGroupName is the case-insensitive identity of a group name.
func FoldGroupName(name string) string { return strings.ToLower(name) }

func mailKey(login string, seq uint64) string {
	return prefMail + login + "/" + string(u64(seq))
}

func ok() *statepb.Result { return &statepb.Result{} }

func fail(c codes.Code, format string, args ...any) *statepb.Result {
	return &statepb.Result{Code: uint32(c), Message: fmt.Sprintf(format, args...)}
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// getter is a transaction to read from: badger's, or the state machine's
// writeTxn.
type getter interface {
	Get(key []byte) (*badger.Item, error)
}

func has(txn getter, key string) (bool, error) {
	_, err := txn.Get([]byte(key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	return err == nil, err
}

func getProto(txn getter, key string, m proto.Message) (bool, error) {
	item, err := txn.Get([]byte(key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, item.Value(func(v []byte) error { return proto.Unmarshal(v, m) })
}

func setProto(txn *writeTxn, key string, m proto.Message) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	return txn.Set([]byte(key), b)
}
