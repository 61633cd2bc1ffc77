package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

func open(t testing.TB) *Store {
	t.Helper()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestIdentityNeedsThePassword(t *testing.T) {
	s := open(t)
	id := &Identity{LoginID: "alice101", Libp2p: []byte("ed"), X25519: []byte("x")}
	if err := s.SaveIdentity(id, "correct horse"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadIdentity("wrong horse"); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("wrong password: %v", err)
	}
	got, err := s.LoadIdentity("correct horse")
	if err != nil || string(got.X25519) != "x" {
		t.Fatalf("%v %v", got, err)
	}
	if owner, _ := s.Owner(); owner != "alice101" {
		t.Fatalf("owner %q", owner)
	}
}

func TestProfileInUseIsRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(dir); !errors.Is(err, ErrInUse) {
		t.Fatalf("second open: %v", err)
	}
}

func TestMessagesShowOnceAndKeepOrder(t *testing.T) {
	s := open(t)
	for i := 0; i < 3; i++ {
		m := &Message{ID: fmt.Sprint("m", i), Peer: "bob102", Body: fmt.Sprint("hello ", i), Sent: time.Now(), State: StateReceived}
		if added, err := s.AddMessage(m); err != nil || !added {
			t.Fatal(added, err)
		}
	}
	if added, _ := s.AddMessage(&Message{ID: "m1", Peer: "bob102", Body: "dup"}); added {
		t.Fatal("a message delivered twice was stored twice")
	}
	s.AddMessage(&Message{ID: "g", Peer: "bob102", Group: "bob102/x", Body: "in a group"})
	h, _ := s.History("@bob102", 10)
	if len(h) != 3 || h[0].Body != "hello 0" || h[2].Body != "hello 2" {
		t.Fatalf("history: %v", h)
	}
	last, _ := s.History("@bob102", 2)
	if len(last) != 2 || last[1].Body != "hello 2" {
		t.Fatalf("last two: %v", last)
	}
	found, _ := s.Search("HELLO 1", 10)
	if len(found) != 1 || found[0].ID != "m1" {
		t.Fatalf("search: %v", found)
	}
}

func TestQueueSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	for _, id := range []string{"a", "b"} {
		m := &Message{ID: id, Peer: "bob102", Outgoing: true, State: StateQueued}
		if err := s.AddOutgoing(m, &Outgoing{ID: id, To: "bob102"}); err != nil {
			t.Fatal(err)
		}
	}
	q, _ := s.Queue()
	s.Dequeue(q[0])
	s.Close()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	q, _ = s.Queue()
	if len(q) != 1 || q[0].ID != "b" {
		t.Fatalf("queue after reopen: %v", q)
	}
	if ours, err := s.RecordDeliveries([]Delivery{{To: "bob102", ID: "b", State: StateDelivered}}); err != nil || !ours[0] {
		t.Fatalf("acknowledged: %v %v", ours, err)
	}
	if q, _ = s.Queue(); len(q) != 0 {
		t.Fatalf("queue after the acknowledgement: %v", q)
	}
	// A second acknowledgement changes nothing.
	if _, err := s.RecordDeliveries([]Delivery{{To: "bob102", ID: "b", State: StateDelivered}}); err != nil {
		t.Fatal(err)
	}
	if h, _ := s.History("@bob102", 5); len(h) != 2 || h[1].State != StateDelivered || h[0].State != StateQueued {
		t.Fatalf("history: %+v", h)
	}
}

func TestRecordDeliveries(t *testing.T) {
	s := open(t)
	m := &Message{ID: "g1", Group: "Team", From: "alice101", Body: "hi", Outgoing: true, State: StateQueued}
	if err := s.AddOutgoing(m, &Outgoing{ID: "g1", To: "bob102", Group: "Team"}, &Outgoing{ID: "g1", To: "cat103", Group: "Team"}); err != nil {
		t.Fatal(err)
	}
	ours, err := s.RecordDeliveries([]Delivery{
		{To: "bob102", ID: "g1", State: StateSent},
		{To: "bob102", ID: "g1", State: StateDelivered},
		{To: "bob102", ID: "g1", State: StateSent}, // late: must not undo delivered
		{To: "eve666", ID: "forged", State: StateDelivered},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !ours[0] || !ours[1] || ours[3] {
		t.Fatalf("which were ours: %v", ours)
	}
	h, _ := s.History("#team", 10)
	if len(h) != 1 || h[0].State != StateDelivered {
		t.Fatalf("history: %+v", h)
	}
	q, _ := s.Queue()
	if len(q) != 1 || q[0].To != "cat103" {
		t.Fatalf("queue keeps only cat103's delivery: %+v", q)
	}
}

// FuzzDecode: a damaged profile record is an error, not a crash.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"id":"x","peer":"bob","body":"hi","seq":3}`))
	f.Add([]byte(`{"login_id":"a","t":3,"m":65536,"p":2}`))
	f.Add([]byte(`{`))
	f.Add([]byte(`{"key":"cd","from":"alice101","have":"BQ==","size":3,"recipients":[{"login":"b"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Message
		decode(b, &m)
		var o Outgoing
		decode(b, &o)
		var si sealedIdentity
		decode(b, &si)
		var ot OutTransfer
		decode(b, &ot)
		var it InTransfer
		decode(b, &it)
	})
}

// BenchmarkAddOutgoing is the sender's share of a message's latency: the
// message and its queue entry stored in one transaction.
func BenchmarkAddOutgoing(b *testing.B) {
	s := open(b)
	body := strings.Repeat("x", 100)
	i := 0
	for b.Loop() {
		i++
		id := fmt.Sprintf("m%d", i)
		m := &Message{ID: id, Peer: "bob102", From: "alice101", Body: body, Sent: time.Now(), Outgoing: true, State: StateQueued}
		o := &Outgoing{ID: id, To: "bob102", Body: body, SentAt: time.Now().UnixNano(), Payload: make([]byte, 160)}
		if err := s.AddOutgoing(m, o); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAddMessage is the recipient's share: a message stored once by id.
func BenchmarkAddMessage(b *testing.B) {
	s := open(b)
	body := strings.Repeat("x", 100)
	i := 0
	for b.Loop() {
		i++
		m := &Message{ID: fmt.Sprintf("m%d", i), Peer: "alice101", From: "alice101", Body: body, Sent: time.Now(), State: StateReceived}
		if _, err := s.AddMessage(m); err != nil {
			b.Fatal(err)
		}
	}
}

// Numbers given to history and queue entries keep rising across restarts
// and across the blocks the counters reserve, so a message stored after a
// restart never takes the key of one stored before it.
func TestNumbersKeepRisingAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	var last uint64
	add := func(s *Store, id string) {
		t.Helper()
		m := &Message{ID: id, Peer: "bob102", Outgoing: true, State: StateQueued}
		o := &Outgoing{ID: id, To: "bob102"}
		if err := s.AddOutgoing(m, o); err != nil {
			t.Fatal(err)
		}
		if m.StoredSeq <= last || o.Seq == 0 {
			t.Fatalf("message %s numbered %d after %d (queue entry %d)", id, m.StoredSeq, last, o.Seq)
		}
		last = m.StoredSeq
	}
	total := 0
	for round, n := range []int{3, counterBlock + 5, 1} {
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			add(s, fmt.Sprintf("%d-%d", round, i))
		}
		total += n
		s.Close()
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if h, _ := s.History("@bob102", 2*total); len(h) != total {
		t.Fatalf("%d of %d messages in the history", len(h), total)
	}
	if q, _ := s.Queue(); len(q) != total {
		t.Fatalf("%d of %d messages in the queue", len(q), total)
	}
}

// A profile written when the counters held the last number used (not the
// end of a reserved block) goes on numbering above it.
func TestCounterWrittenByAnOlderVersion(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(txn *badger.Txn) error {
		return txn.Set([]byte("seq/history"), binary.BigEndian.AppendUint64(nil, 41))
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := &Message{ID: "x", Peer: "bob102"}
	if _, err := s.AddMessage(m); err != nil || m.StoredSeq != 42 {
		t.Fatalf("numbered %d (%v), want 42", m.StoredSeq, err)
	}
}

func TestTransfersSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := &OutTransfer{ID: "ab", Path: "/x/a.bin", Size: 10, State: XferOffered,
		Recipients: []*OutRecipient{{Login: "bob102", Token: []byte("t"), State: XferOffered}}}
	in := &InTransfer{Key: "cd", From: "alice101", ID: "ef", Size: 3, State: XferActive, Have: []byte{5}}
	if err := s.PutOutTransfer(out); err != nil {
		t.Fatal(err)
	}
	if err := s.PutInTransfer(in); err != nil {
		t.Fatal(err)
	}
	// A control message queues with no history line.
	if err := s.AddOutgoing(nil, &Outgoing{ID: "c1", To: "alice101", Kind: KindControl, Transfer: "ef", Payload: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	outs, err := s.OutTransfers()
	if err != nil || len(outs) != 1 || outs[0].Recipients[0].Login != "bob102" {
		t.Fatalf("out transfers: %v %v", outs, err)
	}
	got, err := s.InTransfer("cd")
	if err != nil || got.Have[0] != 5 || got.From != "alice101" {
		t.Fatalf("in transfer: %+v %v", got, err)
	}
	if _, err := s.InTransfer("zz"); err != ErrNotFound {
		t.Fatalf("unknown transfer: %v", err)
	}
	q, _ := s.Queue()
	if len(q) != 1 || q[0].Kind != KindControl || q[0].Transfer != "ef" {
		t.Fatalf("queue: %+v", q)
	}
	if h, _ := s.History("@alice101", 10); len(h) != 0 {
		t.Fatalf("a control message made history: %v", h)
	}
}

// One sender whose key changed cannot fill the profile with held mail:
// past the bound their oldest envelope goes, other senders' stay.
func TestHeldMailIsBoundedPerSender(t *testing.T) {
	s := open(t)
	if err := s.HoldMail(&HeldMail{From: "friend", Seq: 1, Envelope: []byte("keep")}); err != nil {
		t.Fatal(err)
	}
	for seq := uint64(10); seq < 10+MaxHeldPerSender+5; seq++ {
		if err := s.HoldMail(&HeldMail{From: "flood", Seq: seq, Envelope: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	flood, err := s.HeldMailFrom("flood")
	if err != nil {
		t.Fatal(err)
	}
	if len(flood) != MaxHeldPerSender || flood[0].Seq != 15 {
		t.Fatalf("held %d from the flooding sender, oldest seq %d; want %d from seq 15", len(flood), flood[0].Seq, MaxHeldPerSender)
	}
	friend, err := s.HeldMailFrom("friend")
	if err != nil || len(friend) != 1 || string(friend[0].Envelope) != "keep" {
		t.Fatalf("the other sender's held mail: %v, %v", friend, err)
	}
	if err := s.ReleaseMail("friend", 1); err != nil {
		t.Fatal(err)
	}
	if friend, _ = s.HeldMailFrom("friend"); len(friend) != 0 {
		t.Fatal("released mail is still held")
	}
}

// Issue 12, point 16: a sealed profile shows nothing of what it holds
// without the password, and opens with it.
func TestSealedProfileRevealsNothingWithoutThePassword(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSealed(dir, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	secret := "meet me at the old mill at noon"
	if _, err := s.AddMessage(&Message{ID: "m1", Peer: "bob102", From: "bob102", Body: secret, Sent: time.Now(), State: StateReceived}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			// Badger picks its files' modes; the folders keep others out.
			if info, _ := d.Info(); info.Mode().Perm() != 0o700 {
				t.Errorf("folder %s is %v, want 0700", path, info.Mode().Perm())
			}
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(secret)) || bytes.Contains(b, []byte("bob102")) {
			t.Errorf("%s holds the history in the clear", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenSealed(dir, "wrong horse"); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("a wrong password: %v", err)
	}
	s, err = OpenSealed(dir, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, _ := s.History("@bob102", 10); len(got) != 1 || got[0].Body != secret {
		t.Fatalf("history after reopening: %v", got)
	}
}

func TestProfileLockRefusesASecondProcess(t *testing.T) {
	dir := t.TempDir()
	l, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Lock(dir); !errors.Is(err, ErrInUse) {
		t.Fatalf("a second lock: %v", err)
	}
	l.Release()
	l2, err := Lock(dir)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	l2.Release()
}

// BenchmarkOpenSealed is opening an encrypted profile at log-in: the
// argon2id key and badger's start (issue 12, point 16).
func BenchmarkOpenSealed(b *testing.B) {
	dir := b.TempDir()
	s, err := OpenSealed(dir, "correct horse")
	if err != nil {
		b.Fatal(err)
	}
	s.Close()
	for b.Loop() {
		s, err := OpenSealed(dir, "correct horse")
		if err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
}
