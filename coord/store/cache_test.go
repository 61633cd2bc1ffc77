package store

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/coord/store/statepb"
)

// A value read before a commit is never stored after that commit dropped
// its key, whichever comes first of the store and the drop.
func TestReadCacheKeepsNothingReadBeforeACommit(t *testing.T) {
	c := newReadCache()
	old := cachedValue{val: []byte("old"), found: true}

	gen := c.begin()
	c.drop([]string{"k"}) // the commit ends while the reader reads
	c.putValue(gen, "k", old)
	if v, ok := c.value("k"); ok {
		t.Fatalf("kept %q read before the commit that changed it", v.val)
	}

	gen = c.begin()
	c.putValue(gen, "k", old) // stored first, then the commit drops it
	c.drop([]string{"k"})
	if v, ok := c.value("k"); ok {
		t.Fatalf("the commit left %q cached", v.val)
	}

	gen = c.begin()
	c.putFind(gen, "alice", []string{"alice101"})
	c.drop([]string{prefRoll + "7/bob7"}) // a sign-up: every find may change
	if got, ok := c.find("alice"); ok {
		t.Fatalf("a sign-up left the find answer %v cached", got)
	}
	gen = c.begin()
	c.putFind(gen, "alice", []string{"alice101"})
	c.drop([]string{prefMailbox + "alice101"}) // mail changes no name
	if _, ok := c.find("alice"); !ok {
		t.Fatal("mail dropped the cached find answers")
	}
}

func TestReadCacheStaysBounded(t *testing.T) {
	c := newReadCache()
	for i := 0; i < maxCacheEntries+10; i++ {
		c.putValue(c.begin(), strconv.Itoa(i), cachedValue{})
	}
	if n := c.values.Load().count.Load(); n > maxCacheEntries || n == 0 {
		t.Fatalf("%d entries cached, the bound is %d", n, maxCacheEntries)
	}
}

// Readers running beside the state machine never see a value older than
// the last write that had been applied when they began, and a sign-up
// shows in FindAccounts at once.
func TestCachedReadsFollowEveryCommit(t *testing.T) {
	f, _ := openFSM(t)
	a := &applier{t: t, f: f}
	a.apply(account("alice101", "alice", "101"))
	var latest atomic.Int64
	var stale atomic.Value
	done := make(chan struct{})
	var wg sync.WaitGroup
	for r := 0; r < 3; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				want := latest.Load()
				k, err := f.Keys("alice101")
				if errors.Is(err, ErrNotFound) && want == 0 {
					continue
				}
				got, _ := strconv.ParseInt(k.GetPeerId(), 10, 64)
				if err != nil || got < want {
					stale.CompareAndSwap(nil, fmt.Sprintf("read peer id %q (%v) after write %d was applied", k.GetPeerId(), err, want))
				}
			}
		}()
	}
	for i := int64(1); i <= 120; i++ {
		a.apply(&statepb.Command_PublishKeys{PublishKeys: &api.Keys{LoginId: "alice101", PeerId: strconv.FormatInt(i, 10)}})
		latest.Store(i)
		if i%40 == 0 {
			login := fmt.Sprintf("user%d101", i)
			before, _ := f.FindAccounts("101")
			a.apply(account(login, fmt.Sprintf("user%d", i), "101"))
			after, _ := f.FindAccounts("101")
			if len(after) != len(before)+1 {
				t.Fatalf("roll 101 found %v before signing up %s and %v after", before, login, after)
			}
		}
	}
	close(done)
	wg.Wait()
	if s := stale.Load(); s != nil {
		t.Fatal(s)
	}
}

// A restored snapshot replaces what was cached, found or not.
func TestRestoreDropsCachedReads(t *testing.T) {
	f, _ := openFSM(t)
	a := &applier{t: t, f: f}
	a.apply(account("alice101", "alice", "101"))

	g, _ := openFSM(t)
	b := &applier{t: t, f: g}
	b.apply(account("bob102", "bob", "102"))
	if _, err := g.Account("bob102"); err != nil { // cached: found
		t.Fatal(err)
	}
	if _, err := g.Account("alice101"); !errors.Is(err, ErrNotFound) { // cached: absent
		t.Fatalf("alice101 before the restore: %v", err)
	}
	copySnapshot(t, f, g)
	if _, err := g.Account("bob102"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("bob102 is not in the snapshot but still reads as %v", err)
	}
	if _, err := g.Account("alice101"); err != nil {
		t.Fatalf("alice101 is in the snapshot: %v", err)
	}
	if got, _ := g.FindAccounts("bob"); len(got) != 0 {
		t.Fatalf("FindAccounts(bob) after the restore: %v", got)
	}
}

// BenchmarkLookUpReads is the state machine's share of one LookUp call (a
// session check, finding the name, its directory entry, its account),
// straight from badger and through the read cache.
func BenchmarkLookUpReads(b *testing.B) {
	f, _ := openFSM(b)
	a := &applier{t: b, f: f}
	for i := 0; i < 1000; i++ {
		a.apply(account(fmt.Sprintf("user%d", i), fmt.Sprintf("user%d", i), strconv.Itoa(i)))
	}
	session := []byte("0123456789abcdef")
	fromBadger := func(key string) {
		var v cachedValue
		if err := f.db.View(func(txn *badger.Txn) error {
			item, err := txn.Get([]byte(key))
			if err == nil {
				v.found = true
				v.val, err = item.ValueCopy(nil)
			}
			if errors.Is(err, badger.ErrKeyNotFound) {
				err = nil
			}
			return err
		}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("badger", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			fromBadger(prefRevoked + string(session))
			logins, err := f.findAccounts("user500")
			if err != nil || len(logins) != 1 {
				b.Fatal(logins, err)
			}
			fromBadger(prefKeys + logins[0])
			fromBadger(prefAccount + logins[0])
		}
	})
	b.Run("cached", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := f.Revoked(session); err != nil {
				b.Fatal(err)
			}
			logins, err := f.FindAccounts("user500")
			if err != nil || len(logins) != 1 {
				b.Fatal(logins, err)
			}
			f.Keys(logins[0])
			if _, err := f.Account(logins[0]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
