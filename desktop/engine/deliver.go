package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/desktop/engine/p2p"
	"github.com/e2em/e2em/desktop/engine/store"
	"github.com/e2em/e2em/desktop/engine/wire"
)

// inflight remembers messages written to a session and not acknowledged
// yet: if that session ends first they are sent again at once (through
// another relay, or directly); after AckTimeout they go to the mailbox.
type inflight struct {
	mu   sync.Mutex
	sent map[string]inflightEntry // "to/id" →
}

type inflightEntry struct {
	at    time.Time
	sess  *p2p.Session
	acked bool // acknowledged; leaves once the profile records it
}

func newInflight() *inflight { return &inflight{sent: map[string]inflightEntry{}} }

func (f *inflight) key(to, id string) string { return to + "/" + id }

func (f *inflight) mark(to, id string, sess *p2p.Session) {
	f.mu.Lock()
	f.sent[f.key(to, id)] = inflightEntry{at: time.Now(), sess: sess}
	f.mu.Unlock()
}

func (f *inflight) get(to, id string) (inflightEntry, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.sent[f.key(to, id)]
	return e, ok
}

// claimAck marks an in-flight message acknowledged and reports whether
// this was its first acknowledgement.
func (f *inflight) claimAck(to, id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.sent[f.key(to, id)]
	if !ok || e.acked {
		return false
	}
	e.acked = true
	f.sent[f.key(to, id)] = e
	return true
}

func (f *inflight) done(to, id string) {
	f.mu.Lock()
	delete(f.sent, f.key(to, id))
	f.mu.Unlock()
}

// Send queues a direct message and starts delivering it. It returns once
// the message is safely in the profile (closing the app now loses nothing).
func (e *Engine) Send(ctx context.Context, to, text string) (string, error) {
	s, err := e.current()
	if err != nil {
		return "", err
	}
	login, err := e.resolveOther(ctx, s, to)
	if err != nil {
		return "", err
	}
	return e.queueText(s, []string{login}, "", text)
}

// resolveOther resolves a recipient who is not the one logged in.
func (e *Engine) resolveOther(ctx context.Context, s *online, to string) (string, error) {
	login, err := e.Resolve(ctx, to)
	if err != nil {
		return "", err
	}
	if login == s.login {
		return "", errors.New("that is you; pick someone else")
	}
	return login, nil
}

// queueText stores one message for several recipients (a group send) and
// queues one delivery per recipient, atomically.
func (e *Engine) queueText(s *online, recipients []string, group, text string) (string, error) {
	if len(text) > 60000 {
		return "", errors.New("the message is too long (60,000 bytes at most)")
	}
	id := wire.NewID()
	now := time.Now()
	payload, err := proto.Marshal(&wire.Payload{Id: id, SentUnixNano: now.UnixNano(), From: s.login,
		Kind: &wire.Payload_Text{Text: &wire.Text{Body: text, Group: group}}})
	if err != nil {
		return "", err
	}
	m := &store.Message{ID: id, Group: group, From: s.login, Body: text, Sent: now, Outgoing: true, State: store.StateQueued}
	if group == "" {
		m.Peer = recipients[0]
	}
	var out []*store.Outgoing
	for _, r := range recipients {
		out = append(out, &store.Outgoing{ID: id, To: r, Group: group, Body: text, SentAt: now.UnixNano(), Payload: payload})
	}
	if err := e.store.AddOutgoing(m, out...); err != nil {
		return "", fmt.Errorf("save the message: %w", err)
	}
	kick := false
	for _, o := range out {
		if !e.sendNow(s, o) {
			kick = true
		}
	}
	if kick {
		e.kickQueue(s)
	}
	return id, nil
}

// sendNow is the fast path: when the recipient has a live session and
// nothing of theirs is held back, the message goes on it at once instead of
// waiting for the delivery loop. Anything else is left to the loop.
func (e *Engine) sendNow(s *online, o *store.Outgoing) bool {
	s.markQuiet(o)
	lock := s.recipientLock(o.To)
	if !lock.TryLock() {
		return false
	}
	defer lock.Unlock()
	if _, held := s.held.Load(o.To); held {
		return false
	}
	sess := s.msgr.Session(o.To)
	if sess == nil || sess.Send(o.Payload) != nil {
		return false
	}
	s.inflight.mark(o.To, o.ID, sess)
	e.markSessionSent(s, o, sess)
	return true
}

// recipientLock serialises sending to one recipient, so the fast path and
// the delivery loop never interleave and each recipient's order holds.
func (s *online) recipientLock(to string) *sync.Mutex {
	l, _ := s.sending.LoadOrStore(to, &sync.Mutex{})
	return l.(*sync.Mutex)
}

func (e *Engine) kickQueue(s *online) {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// deliverLoop sends the queue, in order per recipient, whenever something
// is queued and every second for retries.
func (e *Engine) deliverLoop(s *online) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	e.fetchMail(s)
	for {
		e.flush(s)
		select {
		case <-s.ctx.Done():
			return
		case <-s.kick:
		case <-tick.C:
		}
	}
}

// flush tries every queued message once; recipients in parallel, each
// recipient's messages in order.
func (e *Engine) flush(s *online) {
	q, err := e.store.Queue()
	if err != nil {
		e.log.Error("read the outgoing queue", "err", err)
		return
	}
	byTo := map[string][]*store.Outgoing{}
	var order []string
	for _, o := range q {
		if _, ok := byTo[o.To]; !ok {
			order = append(order, o.To)
		}
		byTo[o.To] = append(byTo[o.To], o)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, to := range order {
		wg.Add(1)
		sem <- struct{}{}
		go func(to string, msgs []*store.Outgoing) {
			defer wg.Done()
			defer func() { <-sem }()
			e.deliverTo(s, to, msgs)
		}(to, byTo[to])
	}
	wg.Wait()
}

func (e *Engine) deliverTo(s *online, to string, msgs []*store.Outgoing) {
	lock := s.recipientLock(to)
	lock.Lock()
	defer lock.Unlock()
	// Held until everything queued for to has left: the fast path must not
	// overtake a message that is still waiting.
	s.held.Store(to, true)
	defer func() {
		if q, err := e.store.Queue(); err == nil && !waitingFor(s, q, to) {
			s.held.Delete(to)
		}
	}()
	t, err := e.target(s.ctx, s, to, false)
	if err != nil {
		// Report why a recipient's messages wait once, not every second.
		if _, seen := s.waiting.LoadOrStore(to+"\x00"+err.Error(), true); !seen && s.ctx.Err() == nil {
			e.emit(Event{Kind: EventWaiting, To: to, Text: err.Error()})
		}
		return
	}
	direct := true
	for _, o := range msgs {
		if s.ctx.Err() != nil {
			return
		}
		s.markQuiet(o)
		if sent, ok := s.inflight.get(to, o.ID); ok {
			switch {
			case sent.acked:
				continue // acknowledged; the profile is recording it
			case sent.sess.Closed():
				// The session ended before the acknowledgement came: the
				// message may or may not have arrived. Send it again
				// (the recipient shows it once either way).
				s.inflight.done(to, o.ID)
			case time.Since(sent.at) < e.cfg.AckTimeout:
				continue // on its way; wait for the acknowledgement
			default:
				direct = false // never acknowledged: use the mailbox
			}
		}
		if direct {
			var sess *p2p.Session
			sess, t, err = e.sendDirect(s, t, o.Payload)
			if err == nil {
				s.inflight.mark(to, o.ID, sess)
				e.markSessionSent(s, o, sess)
				continue
			}
			var rej *p2p.RejectedError
			if errors.As(err, &rej) {
				e.emit(Event{Kind: EventWaiting, To: to, Text: rej.Error()})
			}
			e.log.Info("direct delivery failed; using the mailbox", "to", to, "err", err)
			direct = false // keep this recipient's order: the rest follow
			// What failed may be a stale directory entry (a new device,
			// new keys): ask again before sealing anything for the mailbox.
			e.forget(s, to)
			if t, err = e.target(s.ctx, s, to, true); err != nil {
				return
			}
		}
		if err := e.putMail(s, t, o.Payload); err != nil {
			e.log.Warn("mailbox delivery failed; will retry", "to", to, "err", err)
			return
		}
		s.inflight.done(to, o.ID)
		if err := e.store.Dequeue(o); err != nil {
			e.log.Error("dequeue", "err", err)
		}
		e.markSent(s, o, ViaMailbox, "")
	}
}

// sendDirect puts a payload on a session with t: directly, else through a
// relay. A directory entry read moments after its owner logged in may list
// no relay circuit yet (the reservation came later, and was published
// then), and a dial to addresses behind a NAT hangs until it times out. So
// DirectTimeout is spent in three attempts, each with the entry as the
// directory has it then. It returns the target it used last.
func (e *Engine) sendDirect(s *online, t *p2p.Target, payload []byte) (*p2p.Session, *p2p.Target, error) {
	const attempts = 3
	var sess *p2p.Session
	var err error
	for i := 0; i < attempts; i++ {
		if i > 0 {
			if fresh, ferr := e.target(s.ctx, s, t.LoginID, true); ferr == nil {
				t = fresh
			}
		}
		ctx, cancel := context.WithTimeout(s.ctx, e.cfg.DirectTimeout/attempts)
		sess, err = s.msgr.Send(ctx, *t, payload)
		cancel()
		var rej *p2p.RejectedError
		if err == nil || errors.As(err, &rej) || s.ctx.Err() != nil {
			break
		}
	}
	return sess, t, err
}

// waitingFor reports whether q holds a message for to that has not been
// written to a live session yet.
func waitingFor(s *online, q []*store.Outgoing, to string) bool {
	for _, o := range q {
		if o.To != to {
			continue
		}
		if sent, ok := s.inflight.get(to, o.ID); !ok || sent.sess.Closed() {
			return true
		}
	}
	return false
}

func (e *Engine) markSessionSent(s *online, o *store.Outgoing, sess *p2p.Session) {
	via, relay := ViaDirect, ""
	if sess.Relayed() {
		via, relay = ViaRelay, sess.RelayPeer()
	}
	e.markSent(s, o, via, relay)
}

func (e *Engine) markSent(s *online, o *store.Outgoing, via, relay string) {
	e.recordDelivery(s, stateUpdate{Delivery: store.Delivery{To: o.To, ID: o.ID, State: store.StateSent, Via: via}})
	if o.Kind == store.KindFileOffer {
		e.offerLeft(s, o.Transfer, o.To, via)
	}
	if o.Kind == "" {
		e.emit(Event{Kind: EventSent, To: o.To, ID: o.ID, Group: o.Group, Via: via, Relay: relay})
	}
}

// markQuiet notes the ids of a file's offers and control messages: their
// delivery is reported by the transfer's own events, not as messages.
func (s *online) markQuiet(o *store.Outgoing) {
	if o.Kind != "" {
		s.quiet.Store(o.ID, true)
	}
}

func (s *online) isQuiet(id string) bool {
	_, ok := s.quiet.Load(id)
	return ok
}
