package engine

import (
	"time"

	"github.com/e2em/e2em/desktop/engine/store"
)

// Delivery states are recorded off the message's path, by recordStates:
// a message in flight does not wait for (or compete with) the bookkeeping
// of the one before. Nothing is lost if the app dies before they are
// written: a message whose acknowledgement was not recorded is still
// queued, goes again at the next start, and its recipient shows it once.
const stateWindow = time.Millisecond

type stateUpdate struct {
	store.Delivery
	reported bool          // EventDelivered already emitted
	flushed  chan struct{} // a flush request: closed once all before it is written
}

func (e *Engine) recordDelivery(s *online, u stateUpdate) {
	select {
	case s.states <- u:
	default: // far behind: write it now rather than drop it
		e.writeDeliveries(s, []stateUpdate{u})
	}
}

// flushStates returns once every delivery state reported so far is in the
// profile (History shows what the events said).
func (e *Engine) flushStates(s *online) {
	done := make(chan struct{})
	select {
	case s.states <- stateUpdate{flushed: done}:
	case <-s.ctx.Done():
		return
	}
	select {
	case <-done:
	case <-s.ctx.Done():
	}
}

// recordStates writes delivery states in batches: the first update opens
// a window of stateWindow, everything arriving in it goes in one
// transaction.
func (e *Engine) recordStates(s *online) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var batch []stateUpdate
	write := func() {
		e.writeDeliveries(s, batch)
		batch = batch[:0]
	}
	for {
		select {
		case u := <-s.states:
			if u.flushed != nil {
				write()
				close(u.flushed)
				continue
			}
			if len(batch) == 0 {
				timer.Reset(stateWindow)
			}
			batch = append(batch, u)
			if len(batch) >= 1024 {
				write()
			}
		case <-timer.C:
			write()
		case <-s.ctx.Done():
			for {
				select {
				case u := <-s.states:
					if u.flushed != nil {
						close(u.flushed)
					} else {
						batch = append(batch, u)
					}
				default:
					write()
					return
				}
			}
		}
	}
}

func (e *Engine) writeDeliveries(s *online, batch []stateUpdate) {
	if len(batch) == 0 {
		return
	}
	ds := make([]store.Delivery, len(batch))
	for i, u := range batch {
		ds[i] = u.Delivery
	}
	ours, err := e.store.RecordDeliveries(ds)
	if err != nil {
		e.log.Error("record delivery states", "err", err)
		// Unrecorded acknowledgements: the messages stay queued and go
		// again, and their next acknowledgement is recorded then.
		for _, u := range batch {
			if u.State == store.StateDelivered {
				s.inflight.done(u.To, u.ID)
			}
		}
		return
	}
	for i, u := range batch {
		if u.State != store.StateDelivered {
			continue
		}
		s.inflight.done(u.To, u.ID)
		if ours[i] && !u.reported && !s.isQuiet(u.ID) {
			e.emit(Event{Kind: EventDelivered, To: u.To, ID: u.ID})
		}
	}
}
