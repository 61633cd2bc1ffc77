package store

import (
	"bytes"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/grpc/codes"

	"github.com/e2em/e2em/coord/store/statepb"
)

func (a *applier) reserveAt(at time.Time, limits ...*statepb.Limit) *statepb.Result {
	a.t.Helper()
	return a.applyCmd(&statepb.Command{TimeUnixNano: at.UnixNano(), Op: &statepb.Command_Reserve{Reserve: &statepb.Reserve{Limits: limits}}})
}

func TestReserveCountsAllOrNothing(t *testing.T) {
	f, _ := openFSM(t)
	a := &applier{t: t, f: f}
	base := time.Unix(1_700_000_000, 0)
	tight := &statepb.Limit{Key: LimitKey("t", "a"), WindowNano: int64(time.Minute), Max: 2, ReleasedOnSuccess: true}
	loose := &statepb.Limit{Key: LimitKey("t", "b"), WindowNano: int64(time.Minute), Max: 10}
	for i := range 2 {
		if r := a.reserveAt(base.Add(time.Duration(i)*time.Second), loose, tight); r.Code != 0 {
			t.Fatalf("attempt %d refused: %v", i, r)
		}
	}
	// While the counted attempts may still be in their checks (the
	// newest is under 30 s old), come back in 2 s: they may be released.
	r := a.reserveAt(base.Add(10*time.Second), loose, tight)
	if codes.Code(r.Code) != codes.ResourceExhausted || r.Seq != 2 {
		t.Fatalf("third attempt: %v (want refused, 2 s to wait)", r)
	}
	// Once they are surely done, they are failures: wait out the window.
	r = a.reserveAt(base.Add(40*time.Second), loose, tight)
	if codes.Code(r.Code) != codes.ResourceExhausted || r.Seq != 20 {
		t.Fatalf("fourth attempt: %v (want refused, 20 s to wait)", r)
	}
	// A limit whose attempts are never released (sign-ups) says the
	// window's wait at once.
	signups := &statepb.Limit{Key: LimitKey("t", "c"), WindowNano: int64(time.Minute), Max: 1}
	if r := a.reserveAt(base.Add(41*time.Second), signups); r.Code != 0 {
		t.Fatalf("first sign-up: %v", r)
	}
	if r := a.reserveAt(base.Add(42*time.Second), signups); codes.Code(r.Code) != codes.ResourceExhausted || r.Seq != 59 {
		t.Fatalf("second sign-up: %v (want refused, 59 s to wait)", r)
	}
	// The refused attempt counted against neither limit.
	if got, _ := f.Attempts(loose.Key, time.Minute, base.Add(10*time.Second).UnixNano()); len(got) != 2 {
		t.Fatalf("the looser limit counted %d attempts, want 2", len(got))
	}
	// The window moves on.
	if r := a.reserveAt(base.Add(61*time.Second), loose, tight); r.Code != 0 {
		t.Fatalf("after the window: %v", r)
	}
}

func TestReserveBacksOffPastTheLimit(t *testing.T) {
	f, _ := openFSM(t)
	a := &applier{t: t, f: f}
	base := time.Unix(1_700_000_000, 0)
	l := &statepb.Limit{Key: LimitKey("login", "alice101", "10.0.0.1"), WindowNano: int64(15 * time.Minute), Max: 3, Backoff: true}
	at := base
	for range 3 {
		if r := a.reserveAt(at, l); r.Code != 0 {
			t.Fatal(r)
		}
	}
	// Past max: 1, then 2, 4 and 8 minutes after the last attempt.
	for _, gap := range []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute} {
		if r := a.reserveAt(at.Add(gap-time.Millisecond), l); codes.Code(r.Code) != codes.ResourceExhausted {
			t.Fatalf("allowed %v after the last attempt, before the %v backoff", gap-time.Millisecond, gap)
		}
		at = at.Add(gap)
		if r := a.reserveAt(at, l); r.Code != 0 {
			t.Fatalf("refused after a backoff of %v: %v", gap, r)
		}
	}
	// A success clears the count for this account and address.
	a.applyCmd(&statepb.Command{TimeUnixNano: at.UnixNano(), Op: &statepb.Command_Release{Release: &statepb.Release{Clear: [][]byte{l.Key}}}})
	if r := a.reserveAt(at, l); r.Code != 0 {
		t.Fatalf("refused after the count was cleared: %v", r)
	}
}

func TestReleaseForgetsOneAttempt(t *testing.T) {
	f, _ := openFSM(t)
	a := &applier{t: t, f: f}
	base := time.Unix(1_700_000_000, 0)
	l := &statepb.Limit{Key: LimitKey("addr", "10.0.0.1"), WindowNano: int64(time.Minute), Max: 1}
	r := a.reserveAt(base, l)
	if r.Code != 0 || int64(r.Seq) != base.UnixNano() {
		t.Fatalf("reserve: %v", r)
	}
	a.applyCmd(&statepb.Command{TimeUnixNano: base.UnixNano(), Op: &statepb.Command_Release{Release: &statepb.Release{Forget: [][]byte{l.Key}, AttemptUnixNano: int64(r.Seq)}}})
	if r := a.reserveAt(base.Add(time.Second), l); r.Code != 0 {
		t.Fatalf("the released attempt still counts: %v", r)
	}
}

// Limits keyed by whatever names callers send are pruned once their
// window passes: nothing is left behind.
func TestLimitsArePruned(t *testing.T) {
	f, _ := openFSM(t)
	a := &applier{t: t, f: f}
	base := time.Unix(1_700_000_000, 0)
	if err := f.db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("fail/acct/anything at all"), nil) }); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		a.reserveAt(base, &statepb.Limit{Key: LimitKey("login", string(rune('a'+i%26))+string(rune('a'+i/26)), "10.0.0.1"), WindowNano: int64(time.Minute), Max: 10})
	}
	// Each commit prunes a batch; a few later commands clear them all.
	for i := range 4 {
		a.reserveAt(base.Add(2*time.Minute+time.Duration(i)), &statepb.Limit{Key: LimitKey("other"), WindowNano: int64(time.Hour), Max: 100})
	}
	for _, prefix := range []string{prefLimit + "login/", prefLimitTime, prefLegacyFail} {
		if n := countPrefix(t, f, prefix); prefix == prefLimitTime && n != 4 || prefix != prefLimitTime && n != 0 {
			t.Fatalf("%d %q records left after the window passed", n, prefix)
		}
	}
}

func TestLimitKeysCannotCollide(t *testing.T) {
	pairs := [][2][]byte{
		{LimitKey("login", "ab", "c"), LimitKey("login", "a", "bc")},
		{LimitKey("login", "a/b"), LimitKey("login", "a", "b")},
		{LimitKey("login", ""), LimitKey("login")},
	}
	for _, p := range pairs {
		if bytes.Equal(p[0], p[1]) {
			t.Fatalf("two different limits share the key %q", p[0])
		}
	}
}

func countPrefix(t *testing.T, f *FSM, prefix string) int {
	t.Helper()
	n := 0
	err := f.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
