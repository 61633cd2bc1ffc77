package store

import (
	"bytes"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/coord/store/statepb"
)

func openFSM(t testing.TB) (*FSM, *[]Event) {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions("").WithInMemory(true).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	var events []Event
	return NewFSM(db, nil, func(e Event) { events = append(events, e) }), &events
}

type applier struct {
	t   testing.TB
	f   *FSM
	idx uint64
}

func (a *applier) apply(op any) *statepb.Result {
	a.t.Helper()
	cmd := &statepb.Command{TimeUnixNano: time.Now().UnixNano()}
	switch o := op.(type) {
	case *statepb.Command_InitCluster:
		cmd.Op = o
	case *statepb.Command_CreateAccount:
		cmd.Op = o
	case *statepb.Command_Group:
		cmd.Op = o
	case *statepb.Command_PutMail:
		cmd.Op = o
	case *statepb.Command_AckMail:
		cmd.Op = o
	case *statepb.Command_LoginFailed:
		cmd.Op = o
	case *statepb.Command_PublishKeys:
		cmd.Op = o
	case *statepb.Command_RevokeSession:
		cmd.Op = o
	default:
		a.t.Fatalf("unknown op %T", op)
	}
	return a.applyCmd(cmd)
}

func (a *applier) applyCmd(cmd *statepb.Command) *statepb.Result {
	a.t.Helper()
	data, err := proto.Marshal(cmd)
	if err != nil {
		a.t.Fatal(err)
	}
	a.idx++
	out := a.f.Apply(&raft.Log{Index: a.idx, Type: raft.LogCommand, Data: data}).(*applyOutcome)
	return out.result
}

func account(login, user, roll string) *statepb.Command_CreateAccount {
	return &statepb.Command_CreateAccount{CreateAccount: &statepb.CreateAccount{Account: &statepb.Account{
		LoginId: login, Username: user, RollNumber: roll, Password: &statepb.PasswordHash{Hash: []byte{1}},
	}}}
}

func group(kind statepb.GroupOp_Kind, name, login string) *statepb.Command_Group {
	return &statepb.Command_Group{Group: &statepb.GroupOp{Kind: kind, Name: name, LoginId: login}}
}

func TestAccountsAreUniqueAndFindable(t *testing.T) {
	f, _ := openFSM(t)
	a := &applier{t: t, f: f}
	if r := a.apply(account("alice101", "alice", "101")); r.Code != 0 || r.LoginId != "alice101" {
		t.Fatalf("first sign-up: %v", r)
	}
	if r := a.apply(account("alice102", "Alice", "102")); codes.Code(r.Code) != codes.AlreadyExists {
		t.Fatalf("same username in other case: want AlreadyExists, got %v", r)
	}
	a.apply(account("bob101", "bob", "101"))
	got, err := f.FindAccounts("101")
	if err != nil || len(got) != 2 || got[0] != "alice101" || got[1] != "bob101" {
		t.Fatalf("roll number 101 should name alice101 and bob101, got %v %v", got, err)
	}
	if got, _ := f.FindAccounts("ALICE"); len(got) != 1 || got[0] != "alice101" {
		t.Fatalf("username lookup: %v", got)
	}
	if got, _ := f.FindAccounts("nobody"); len(got) != 0 {
		t.Fatalf("unknown name matched %v", got)
	}
}

func TestGroupsLifecycle(t *testing.T) {
	f, events := openFSM(t)
	a := &applier{t: t, f: f}
	a.apply(account("alice101", "alice", "101"))
	a.apply(account("bob102", "bob", "102"))
	if r := a.apply(group(statepb.GroupOp_JOIN, "g1", "bob102")); codes.Code(r.Code) != codes.NotFound {
		t.Fatalf("joining an unknown group must be NotFound, got %v", r)
	}
	if _, err := f.Group("g1"); err != ErrNotFound {
		t.Fatalf("a failed join must not create the group: %v", err)
	}
	if r := a.apply(group(statepb.GroupOp_CREATE, "G1", "alice101")); r.Code != 0 {
		t.Fatal(r)
	}
	if r := a.apply(group(statepb.GroupOp_CREATE, "g1", "bob102")); codes.Code(r.Code) != codes.AlreadyExists {
		t.Fatalf("names are case-insensitive: %v", r)
	}
	if r := a.apply(group(statepb.GroupOp_JOIN, "g1", "bob102")); r.Code != 0 || r.Name != "G1" {
		t.Fatalf("join: %v", r)
	}
	if r := a.apply(group(statepb.GroupOp_JOIN, "g1", "bob102")); codes.Code(r.Code) != codes.AlreadyExists {
		t.Fatalf("second join: %v", r)
	}
	g, members, err := f.Members("g1")
	if err != nil || g.Members != 2 || len(members) != 2 {
		t.Fatalf("members: %v %v %v", g, members, err)
	}
	if r := a.apply(group(statepb.GroupOp_LEAVE, "g1", "alice101")); r.Code != 0 {
		t.Fatal(r)
	}
	mine, _, _ := f.MyGroups("alice101", "", 100)
	if len(mine) != 0 {
		t.Fatalf("alice left but still has %v", mine)
	}
	all, _, _ := f.Groups("", 100)
	if len(all) != 1 || all[0].Members != 1 {
		t.Fatalf("groups: %v", all)
	}
	var changes []string
	for _, e := range *events {
		if e.Group != nil {
			changes = append(changes, e.Group.Change)
		}
	}
	if want := []string{"created", "joined", "left"}; !equal(changes, want) {
		t.Fatalf("events %v, want %v", changes, want)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestMailboxOrderQuotaAndAck(t *testing.T) {
	f, _ := openFSM(t)
	a := &applier{t: t, f: f}
	a.apply(account("bob102", "bob", "102"))
	put := func(body string) *statepb.Result {
		return a.apply(&statepb.Command_PutMail{PutMail: &statepb.PutMail{From: "alice101", To: "bob102", Envelope: []byte(body), MaxCount: 3, MaxBytes: 100}})
	}
	for i, body := range []string{"one", "two", "three"} {
		if r := put(body); r.Code != 0 || r.Seq != uint64(i+1) {
			t.Fatalf("put %d: %v", i, r)
		}
	}
	if r := put("four"); codes.Code(r.Code) != codes.ResourceExhausted {
		t.Fatalf("over quota: %v", r)
	}
	if r := a.apply(&statepb.Command_PutMail{PutMail: &statepb.PutMail{To: "nobody", Envelope: []byte("x")}}); codes.Code(r.Code) != codes.NotFound {
		t.Fatalf("mail to nobody: %v", r)
	}
	mail, _ := f.Mail("bob102", 1, 10, 1<<20)
	if len(mail) != 2 || string(mail[0].Envelope) != "two" || string(mail[1].Envelope) != "three" {
		t.Fatalf("mail after 1: %v", mail)
	}
	// An answer stops at its byte budget, but carries one envelope at least.
	if mail, _ := f.Mail("bob102", 0, 10, proto.Size(mail[0])+1); len(mail) != 1 {
		t.Fatalf("byte budget of one envelope gave %d", len(mail))
	}
	if mail, _ := f.Mail("bob102", 0, 10, 1); len(mail) != 1 {
		t.Fatalf("a budget below one envelope gave %d", len(mail))
	}
	a.apply(&statepb.Command_AckMail{AckMail: &statepb.AckMail{LoginId: "bob102", UpToSeq: 2}})
	mail, _ = f.Mail("bob102", 0, 10, 1<<20)
	if len(mail) != 1 || mail[0].Seq != 3 {
		t.Fatalf("after ack: %v", mail)
	}
	box, _ := f.MailboxSize("bob102")
	if box.Count != 1 || box.Bytes != 5 {
		t.Fatalf("mailbox size after ack: %v", box)
	}
	if r := put("four"); r.Code != 0 || r.Seq != 4 {
		t.Fatalf("room again after ack: %v", r)
	}
}

func TestRetriedCommandAppliesOnce(t *testing.T) {
	f, _ := openFSM(t)
	a := &applier{t: t, f: f}
	cmd := &statepb.Command{RequestId: []byte("req-1"), TimeUnixNano: time.Now().UnixNano()}
	cmd.Op = account("alice101", "alice", "101")
	first := a.applyCmd(cmd)
	again := a.applyCmd(cmd)
	if first.Code != 0 || again.Code != 0 || again.LoginId != "alice101" {
		t.Fatalf("a retry must get the first answer: %v then %v", first, again)
	}
}

func TestReplayedEntriesAreSkipped(t *testing.T) {
	f, _ := openFSM(t)
	a := &applier{t: t, f: f}
	a.apply(account("bob102", "bob", "102"))
	data, _ := proto.Marshal(&statepb.Command{TimeUnixNano: 1, Op: &statepb.Command_PutMail{PutMail: &statepb.PutMail{To: "bob102", Envelope: []byte("x")}}})
	log := &raft.Log{Index: 2, Type: raft.LogCommand, Data: data}
	f.Apply(log)
	f.Apply(log) // as after a restart that replays the log
	if box, _ := f.MailboxSize("bob102"); box.Count != 1 {
		t.Fatalf("replay applied twice: %v", box)
	}
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	f, _ := openFSM(t)
	a := &applier{t: t, f: f}
	a.apply(account("alice101", "alice", "101"))
	a.apply(group(statepb.GroupOp_CREATE, "g1", "alice101"))
	g, _ := openFSM(t)
	copySnapshot(t, f, g)
	if _, err := g.Account("alice101"); err != nil {
		t.Fatalf("account lost in snapshot: %v", err)
	}
	if grp, err := g.Group("G1"); err != nil || grp.Members != 1 {
		t.Fatalf("group lost in snapshot: %v %v", grp, err)
	}
	if idx, _ := g.AppliedIndex(); idx != a.idx {
		t.Fatalf("applied index %d after restore, want %d", idx, a.idx)
	}
}

func TestKeysPublishNeedsAccount(t *testing.T) {
	f, events := openFSM(t)
	a := &applier{t: t, f: f}
	if r := a.apply(&statepb.Command_PublishKeys{PublishKeys: &api.Keys{LoginId: "ghost"}}); codes.Code(r.Code) != codes.NotFound {
		t.Fatalf("keys for no account: %v", r)
	}
	a.apply(account("alice101", "alice", "101"))
	a.apply(&statepb.Command_PublishKeys{PublishKeys: &api.Keys{LoginId: "alice101", PeerId: "p"}})
	if k, err := f.Keys("alice101"); err != nil || k.PeerId != "p" {
		t.Fatalf("keys: %v %v", k, err)
	}
	if len(*events) != 1 || (*events)[0].Keys == nil {
		t.Fatalf("want one key event, got %v", *events)
	}
}

// copySnapshot restores a snapshot of from into to.
func copySnapshot(t *testing.T, from, to *FSM) {
	t.Helper()
	snap, err := from.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	if err := to.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
}

type memSink struct{ bytes.Buffer }

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Cancel() error { return nil }
func (m *memSink) Close() error  { return nil }

// FuzzApply feeds arbitrary bytes to the state machine as a Raft entry: it
// must answer, never panic, and keep its applied index.
func FuzzApply(f *testing.F) {
	seed := func(op any) []byte {
		cmd := &statepb.Command{TimeUnixNano: 1}
		switch o := op.(type) {
		case *statepb.Command_CreateAccount:
			cmd.Op = o
		case *statepb.Command_Group:
			cmd.Op = o
		}
		b, _ := proto.Marshal(cmd)
		return b
	}
	f.Add(seed(account("alice101", "alice", "101")))
	f.Add(seed(group(statepb.GroupOp_CREATE, "g", "alice101")))
	f.Add([]byte{0xff, 0x01, 0x02})
	f.Add([]byte{})
	fsm, _ := openFSM(f) // one state machine for every input, as in a replica
	var index atomic.Uint64
	f.Fuzz(func(t *testing.T, data []byte) {
		idx := index.Add(1)
		out, ok := fsm.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: data}).(*applyOutcome)
		if !ok || out.result == nil {
			t.Fatal("no result")
		}
		if got, _ := fsm.AppliedIndex(); got < idx {
			t.Fatalf("applied index %d after entry %d", got, idx)
		}
	})
}

// Issue 12, point 6: groups "a/b" and "a/bob1" made Members("a") list
// phantom members "b/…" and "bob1/…".
func TestGroupNamesCannotForgeMembers(t *testing.T) {
	f, _ := openFSM(t)
	a := &applier{t: t, f: f}
	a.apply(account("alice101", "alice", "101"))
	a.apply(account("mallory7", "mallory", "7"))
	a.apply(group(statepb.GroupOp_CREATE, "a", "alice101"))
	for _, name := range []string{"a/b", "a/bob1"} {
		if r := a.apply(group(statepb.GroupOp_CREATE, name, "mallory7")); codes.Code(r.Code) != codes.InvalidArgument {
			t.Fatalf("group %q: %v", name, r)
		}
	}
	_, members, err := f.Members("a")
	if err != nil || len(members) != 1 || members[0] != "alice101" {
		t.Fatalf("members of a: %v %v", members, err)
	}
}

// Issue 12, point 10: one sender fills only its share of a mailbox; the
// share comes back as the recipient acknowledges.
func TestMailboxSharePerSender(t *testing.T) {
	f, _ := openFSM(t)
	a := &applier{t: t, f: f}
	a.apply(account("bob102", "bob", "102"))
	put := func(from string) *statepb.Result {
		return a.apply(&statepb.Command_PutMail{PutMail: &statepb.PutMail{From: from, To: "bob102", Envelope: []byte("x"),
			MaxCount: 10, MaxBytes: 1 << 20, MaxCountPerSender: 3, MaxBytesPerSender: 1 << 20}})
	}
	for i := range 3 {
		if r := put("mallory7"); r.Code != 0 {
			t.Fatalf("mallory's envelope %d: %v", i, r)
		}
	}
	if r := put("mallory7"); codes.Code(r.Code) != codes.ResourceExhausted {
		t.Fatalf("past her share: %v", r)
	}
	if r := put("alice101"); r.Code != 0 {
		t.Fatalf("another sender was refused: %v", r)
	}
	a.apply(&statepb.Command_AckMail{AckMail: &statepb.AckMail{LoginId: "bob102", UpToSeq: 2}})
	if r := put("mallory7"); r.Code != 0 {
		t.Fatalf("the share did not come back after the ack: %v", r)
	}
}

// Issue 12, point 10: groups per creator and per member are capped, and the
// list comes in pages.
func TestGroupCapsAndPages(t *testing.T) {
	f, _ := openFSM(t)
	a := &applier{t: t, f: f}
	a.apply(account("alice101", "alice", "101"))
	mk := func(kind statepb.GroupOp_Kind, name, login string) *statepb.Result {
		return a.apply(&statepb.Command_Group{Group: &statepb.GroupOp{Kind: kind, Name: name, LoginId: login, MaxCreated: 5, MaxJoined: 7}})
	}
	for i := range 5 {
		if r := mk(statepb.GroupOp_CREATE, fmt.Sprintf("g%d", i), "alice101"); r.Code != 0 {
			t.Fatal(r)
		}
	}
	if r := mk(statepb.GroupOp_CREATE, "g5", "alice101"); codes.Code(r.Code) != codes.ResourceExhausted {
		t.Fatalf("a sixth group: %v", r)
	}
	for i := range 9 {
		if r := mk(statepb.GroupOp_CREATE, fmt.Sprintf("h%d", i), fmt.Sprintf("u%c", 'a'+i)); r.Code != 0 {
			t.Fatal(r)
		}
	}
	mk(statepb.GroupOp_JOIN, "h0", "alice101")
	mk(statepb.GroupOp_JOIN, "h1", "alice101")
	if r := mk(statepb.GroupOp_JOIN, "h2", "alice101"); codes.Code(r.Code) != codes.ResourceExhausted {
		t.Fatalf("an eighth membership: %v", r)
	}
	var names []string
	for token, pages := "", 0; ; pages++ {
		page, next, err := f.Groups(token, 4)
		if err != nil || len(page) > 4 || pages > 5 {
			t.Fatalf("page %d: %d groups, %v", pages, len(page), err)
		}
		for _, g := range page {
			names = append(names, g.Name)
		}
		if next == "" {
			break
		}
		token = next
	}
	if len(names) != 14 || names[0] != "g0" || names[13] != "h8" {
		t.Fatalf("paged through %v", names)
	}
	mine, next, _ := f.MyGroups("alice101", "", 5)
	more, last, _ := f.MyGroups("alice101", next, 5)
	if len(mine) != 5 || len(more) != 2 || last != "" {
		t.Fatalf("my groups in pages: %d then %d (next %q)", len(mine), len(more), last)
	}
}
