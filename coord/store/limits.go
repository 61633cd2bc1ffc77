package store

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/grpc/codes"

	"github.com/e2em/e2em/coord/store/statepb"
)

// Attempt limits (log-ins, sign-ups) live in the state machine so that a
// reservation is decided in the log's order: parallel calls through several
// coordinators cannot all read "9 failures" and all go ahead.
const (
	prefLimit     = "lim/"  // lim/<kind>/<parts> → Failures
	prefLimitTime = "limt/" // limt/<expiry BE>/<limit key> → ""
	maxLimitKey   = 1024
	// prefLegacyFail held older versions' failure counts, never pruned;
	// they are removed a batch per commit.
	prefLegacyFail = "fail/"
	// backoffStep is the first wait past a backing-off limit; each attempt
	// after it doubles the wait, up to the limit's window.
	backoffStep = time.Minute
	// inFlightGrace is how long a counted attempt may still be in its
	// check (the hash queue's wait and the hash); inFlightRetry is when to
	// come back while one may be.
	inFlightGrace = 30 * time.Second
	inFlightRetry = 2 * time.Second
)

// LimitKey names what a limit counts: a kind ("login", "signup-addr", …)
// and its parts (a login id, an address). Every part is length-prefixed,
// so no choice of names makes two different part lists the same key.
func LimitKey(kind string, parts ...string) []byte {
	key := []byte(prefLimit + kind + "/")
	for _, p := range parts {
		key = binary.AppendUvarint(key, uint64(len(p)))
		key = append(key, p...)
	}
	return key
}

func (f *FSM) reserve(txn *writeTxn, r *statepb.Reserve, now int64) (*statepb.Result, []Event, error) {
	type counted struct {
		limit *statepb.Limit
		have  *statepb.Failures
	}
	var all []counted
	for _, l := range r.GetLimits() {
		key := l.GetKey()
		if len(key) <= len(prefLimit) || len(key) > maxLimitKey || string(key[:len(prefLimit)]) != prefLimit || l.GetWindowNano() <= 0 {
			return fail(codes.InvalidArgument, "bad limit"), nil, nil
		}
		c := counted{limit: l, have: &statepb.Failures{}}
		if _, err := getProto(txn, string(key), c.have); err != nil {
			return nil, nil, err
		}
		c.have.UnixNano = recentAttempts(c.have.UnixNano, now, l.GetWindowNano())
		if wait := limitWait(l, c.have.UnixNano, now); wait > 0 {
			secs := int((wait + int64(time.Second) - 1) / int64(time.Second))
			return &statepb.Result{Code: uint32(codes.ResourceExhausted), Message: fmt.Sprintf("too many attempts; try again in %d seconds", secs), Seq: uint64(secs)}, nil, nil
		}
		all = append(all, c)
	}
	for _, c := range all {
		c.have.UnixNano = append(c.have.UnixNano, now)
		c.have.WindowNano = c.limit.GetWindowNano()
		if err := setProto(txn, string(c.limit.Key), c.have); err != nil {
			return nil, nil, err
		}
		expiry := u64(uint64(now + c.limit.GetWindowNano()))
		if err := txn.Set([]byte(prefLimitTime+string(expiry)+"/"+string(c.limit.Key)), nil); err != nil {
			return nil, nil, err
		}
	}
	return &statepb.Result{Seq: uint64(now)}, nil, nil
}

// limitWait is how long (ns) the next attempt must wait; 0 allows it.
func limitWait(l *statepb.Limit, times []int64, now int64) int64 {
	n := len(times)
	max := int(l.GetMax())
	if n < max {
		return 0
	}
	if !l.GetBackoff() || n == 0 {
		if n == 0 {
			return l.GetWindowNano() // max 0: nothing is allowed
		}
		wait := times[n-max] + l.GetWindowNano() - now
		// Attempts still being checked count until they turn out well
		// (then they are released): when the newest is that recent, the
		// place may free within moments, so come back soon rather than
		// when the window has passed. A crowd of neighbours logging in at
		// once waits its turn; a guesser's failures stay counted.
		if l.GetReleasedOnSuccess() && now-times[n-1] < int64(inFlightGrace) {
			wait = min(wait, int64(inFlightRetry))
		}
		return wait
	}
	gap := l.GetWindowNano()
	if shift := n - max; shift < 40 {
		gap = min(int64(backoffStep)<<shift, gap)
	}
	return times[n-1] + gap - now
}

// recentAttempts keeps the times inside the window ending at now.
func recentAttempts(times []int64, now, window int64) []int64 {
	kept := times[:0]
	for _, t := range times {
		if t > now-window {
			kept = append(kept, t)
		}
	}
	return kept
}

func (f *FSM) release(txn *writeTxn, r *statepb.Release) (*statepb.Result, []Event, error) {
	for _, key := range r.GetForget() {
		var have statepb.Failures
		found, err := getProto(txn, string(key), &have)
		if err != nil || !found {
			if err != nil {
				return nil, nil, err
			}
			continue
		}
		kept := have.UnixNano[:0]
		removed := false
		for _, t := range have.UnixNano {
			if t == r.GetAttemptUnixNano() && !removed {
				removed = true
				continue
			}
			kept = append(kept, t)
		}
		have.UnixNano = kept
		if err := setProto(txn, string(key), &have); err != nil {
			return nil, nil, err
		}
	}
	for _, key := range r.GetClear() {
		if err := txn.Delete(key); err != nil {
			return nil, nil, err
		}
	}
	return ok(), nil, nil
}

// pruneLimits forgets attempts whose window has passed, a batch per commit,
// so that limits keyed by any name a caller sends do not pile up.
func (f *FSM) pruneLimits(txn *writeTxn, now int64) error {
	// Older versions' failure counts (fail/acct/<any name>) had no expiry.
	for _, k := range keysUnder(txn, prefLegacyFail, pruneBatch) {
		if err := txn.Delete(k); err != nil {
			return err
		}
	}
	for _, e := range expired(txn, prefLimitTime, now) {
		var have statepb.Failures
		found, err := getProto(txn, e.names, &have)
		if err != nil {
			return err
		}
		if found {
			have.UnixNano = recentAttempts(have.UnixNano, now, have.WindowNano)
			if len(have.UnixNano) == 0 {
				err = txn.Delete([]byte(e.names))
			} else {
				err = setProto(txn, e.names, &have)
			}
			if err != nil {
				return err
			}
		}
		if err := txn.Delete(e.key); err != nil {
			return err
		}
	}
	return nil
}

// Attempts reads the recent attempts counted against a limit (for tests
// and operators).
func (f *FSM) Attempts(key []byte, window time.Duration, now int64) ([]int64, error) {
	var have statepb.Failures
	err := f.db.View(func(txn *badger.Txn) error {
		_, err := getProto(txn, string(key), &have)
		return err
	})
	return recentAttempts(have.UnixNano, now, int64(window)), err
}
