package engine

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/desktop/engine/p2p"
	"github.com/e2em/e2em/desktop/engine/store"
	"github.com/e2em/e2em/desktop/engine/wire"
)

// acknowledged handles an Ack from a recipient. A message still in flight
// on a session is reported delivered at once; the profile follows within
// stateWindow (and the message stays in flight until then, so the delivery
// loop does not send it again meanwhile).
func (e *Engine) acknowledged(s *online, from string, ids []string) {
	for _, id := range ids {
		inFlight := s.inflight.claimAck(from, id)
		if inFlight && !s.isQuiet(id) {
			e.emit(Event{Kind: EventDelivered, To: from, ID: id})
		}
		e.recordDelivery(s, stateUpdate{Delivery: store.Delivery{To: from, ID: id, State: store.StateDelivered}, reported: inFlight})
	}
}

// ackQueue gathers the acknowledgements still to send, per sender and the
// session their messages came on (nil: the mailbox). A route in pending has
// a goroutine sending its acknowledgements; ids that arrive meanwhile go in
// its next record, so a burst of messages costs a few acknowledgements,
// not one each.
type ackQueue struct {
	mu      sync.Mutex
	pending map[ackRoute][]string
}

type ackRoute struct {
	to string
	on *p2p.Session
}

const (
	// maxAcksPerRecord bounds an acknowledgement record (ids are 32 bytes).
	maxAcksPerRecord = 512
	// maxPendingAcks bounds what waits for one route (a sender that
	// floods and never reads): beyond it an id is not acknowledged, and its
	// sender sends the message again, which is shown once and acknowledged
	// then.
	maxPendingAcks = 1 << 16
)

// queueAck acknowledges message id from to, soon and without waiting.
func (e *Engine) queueAck(s *online, to, id string, on *p2p.Session) {
	r := ackRoute{to: to, on: on}
	s.acks.mu.Lock()
	ids, sending := s.acks.pending[r]
	if len(ids) < maxPendingAcks {
		s.acks.pending[r] = append(ids, id)
	}
	s.acks.mu.Unlock()
	if !sending {
		go e.sendAcks(s, r)
	}
}

// sendAcks sends what is queued for r until nothing is.
func (e *Engine) sendAcks(s *online, r ackRoute) {
	for {
		s.acks.mu.Lock()
		ids := s.acks.pending[r]
		if len(ids) == 0 {
			delete(s.acks.pending, r)
			s.acks.mu.Unlock()
			return
		}
		n := min(len(ids), maxAcksPerRecord)
		s.acks.pending[r] = ids[n:]
		s.acks.mu.Unlock()
		e.sendAck(s, r.to, ids[:n], r.on)
	}
}

// sendAck tells the sender messages arrived: on the session they came on,
// else directly, else through the mailbox.
func (e *Engine) sendAck(s *online, to string, ids []string, on *p2p.Session) {
	payload, err := proto.Marshal(&wire.Payload{Id: wire.NewID(), SentUnixNano: time.Now().UnixNano(), From: s.login,
		Kind: &wire.Payload_Ack{Ack: &wire.Ack{Ids: ids}}})
	if err != nil {
		return
	}
	if on != nil && on.Send(payload) == nil {
		return
	}
	t, err := e.target(s.ctx, s, to, false)
	if err != nil {
		e.log.Info("cannot acknowledge", "to", to, "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, e.cfg.DirectTimeout)
	_, err = s.msgr.Send(ctx, *t, payload)
	cancel()
	if err == nil {
		return
	}
	if err := e.putMail(s, t, payload); err != nil {
		e.log.Info("cannot acknowledge", "to", to, "err", err)
	}
}
