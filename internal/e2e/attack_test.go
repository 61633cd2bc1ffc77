package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/desktop/engine"
	"github.com/e2em/e2em/desktop/engine/e2e"
	"github.com/e2em/e2em/desktop/engine/p2p"
	"github.com/e2em/e2em/desktop/engine/wire"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// A registered client that turns hostile sends bob (a real e2em-cli
// process) tampered, truncated, replayed and mis-keyed records on their
// live session: bob rejects and reports each one, and shows only the one
// genuine message.
func TestRecordAttacksReportedByRecipient(t *testing.T) {
	c := sharedCluster(t)
	bob := account(t, c, "ned", "761")
	mallory, err := engine.New(engine.Config{
		Profile: filepath.Join(t.TempDir(), "mallory"), LB: c.Layout.LB, CAFile: c.CAFile(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer mallory.Close()
	go func() { // mallory's own events are not the point
		for range mallory.Events() {
		}
	}()
	ctx := context.Background()
	if _, err := mallory.SignUp(ctx, "mal", "762", "password123"); err != nil {
		t.Fatal(err)
	}
	if err := mallory.Login(ctx, "mal762", "password123"); err != nil {
		t.Fatal(err)
	}
	if _, err := mallory.Send(ctx, "ned761", "hello, I am friendly"); err != nil {
		t.Fatal(err)
	}
	bob.WaitEvent(wait, "message", map[string]string{"from": "mal762"})
	var s interface {
		SealForTest([]byte) ([]byte, error)
		WriteRawFrame(*wire.Frame) error
	}
	s = directSession(t, mallory, "ned761")
	payload, _ := proto.Marshal(&wire.Payload{Id: "genuine-1", From: "mal762", SentUnixNano: time.Now().UnixNano(),
		Kind: &wire.Payload_Text{Text: &wire.Text{Body: "the only genuine one"}}})
	good, err := s.SealForTest(payload)
	if err != nil {
		t.Fatal(err)
	}
	send := func(rec []byte) {
		t.Helper()
		if err := s.WriteRawFrame(&wire.Frame{Kind: &wire.Frame_Record{Record: rec}}); err != nil {
			t.Fatal(err)
		}
	}
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x80
	chain := make([]byte, 32)
	rand.Read(chain)
	stranger, _ := e2e.NewSender(chain, time.Now(), rand.Reader)
	foreign, _ := stranger.Seal(payload, time.Now())
	send(flipped)            // tampered
	send(good[:len(good)-9]) // truncated
	send(foreign)            // another session's key
	send(good)               // genuine
	send(good)               // replayed
	bob.WaitCount(wait, 4, "security", map[string]string{"from": "mal762"})
	bob.WaitEvent(wait, "message", map[string]string{"body": "the only genuine one"})
	if n := bob.Count("message", map[string]string{"body": "the only genuine one"}); n != 1 {
		t.Fatalf("the genuine message showed %d times", n)
	}
	for _, l := range bob.Lines() {
		if l.S("type") == "security" && !strings.Contains(l.S("text"), "rejected a record from mal762") {
			t.Fatalf("unclear report: %v", l)
		}
	}

	// A genuine record that labels itself with a group mallory is not in:
	// refused and reported, not shown as the group's.
	bob.Do("Create club761")
	forged, _ := proto.Marshal(&wire.Payload{Id: "forged-group-1", From: "mal762", SentUnixNano: time.Now().UnixNano(),
		Kind: &wire.Payload_Text{Text: &wire.Text{Body: "the club agrees with mallory", Group: "club761"}}})
	rec, err := s.SealForTest(forged)
	if err != nil {
		t.Fatal(err)
	}
	send(rec)
	report := bob.WaitEvent(wait, "security", map[string]string{"from": "mal762", "group": "club761"})
	if !strings.Contains(report.S("text"), "not a member") {
		t.Fatalf("unclear report: %v", report)
	}
	// Once mallory has joined, her group messages show as the group's.
	if _, err := mallory.JoinGroup(ctx, "club761"); err != nil {
		t.Fatal(err)
	}
	if _, err := mallory.SendGroup(ctx, []string{"club761"}, "hello club"); err != nil {
		t.Fatal(err)
	}
	bob.WaitEvent(wait, "message", map[string]string{"from": "mal762", "group": "club761", "body": "hello club"})
	if n := bob.Count("message", map[string]string{"body": "the club agrees with mallory"}); n != 0 {
		t.Fatalf("the forged group message showed %d times", n)
	}
}

// directSession is eng's session with login once it runs on a direct
// connection: the first may go through a relay and give way to a direct
// one moments later (the directory names only circuits), so a test that
// writes on the session itself takes the direct one, sending now and then
// to make it.
func directSession(t *testing.T, eng *engine.Engine, login string) *p2p.Session {
	t.Helper()
	var s *p2p.Session
	ct.Eventually(t, wait, func() error {
		if sess := eng.Session(login); sess != nil && !sess.Relayed() {
			s = sess
			return nil
		}
		if _, err := eng.Send(context.Background(), login, "are you there?"); err != nil {
			return err
		}
		return fmt.Errorf("no direct session with %s yet", login)
	})
	return s
}
