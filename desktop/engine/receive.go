package engine

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/p2p"
	"github.com/e2em/e2em/desktop/engine/store"
	"github.com/e2em/e2em/desktop/engine/wire"
)

// handler receives what sessions deliver.
type handler struct{ e *Engine }

func (h *handler) Payload(from string, p *wire.Payload, on *p2p.Session) {
	s, err := h.e.current()
	if err != nil {
		return
	}
	h.e.handlePayload(s, from, p, on)
}

func (h *handler) Presence(login string, sess *p2p.Session) {
	s, err := h.e.current()
	if err != nil {
		return
	}
	now := PresenceOffline
	if sess != nil {
		now = PresenceDirect
		if sess.Relayed() {
			now = PresenceRelayed
		}
	}
	if old, _ := s.presence.Swap(login, now); old != now && !(old == nil && now == PresenceOffline) {
		h.e.emit(Event{Kind: EventPresence, Contact: login, Text: now})
	}
}

func (h *handler) Rejected(from string, err error) {
	h.e.emit(Event{Kind: EventSecurity, From: from, Text: err.Error()})
}

// handlePayload stores a message once (however often it arrives) and
// acknowledges it every time, or takes an acknowledgement.
func (e *Engine) handlePayload(s *online, from string, p *wire.Payload, on *p2p.Session) {
	if err := wire.ValidatePayload(p); err != nil {
		e.emit(Event{Kind: EventSecurity, From: from, Text: fmt.Sprintf("rejected a message from %s: %v", from, err)})
		return
	}
	switch k := p.Kind.(type) {
	case *wire.Payload_Ack:
		e.acknowledged(s, from, k.Ack.Ids)
	case *wire.Payload_FileChunk:
		// Not acknowledged: the sender put it in the mailbox and moved on;
		// a missing chunk is fetched from the sender.
		e.mailedChunk(s, from, k.FileChunk)
	case *wire.Payload_FileOffer:
		if g := k.FileOffer.Group; g != "" && !e.senderInGroup(s, g, from) {
			return
		}
		if err := e.fileOffered(s, from, k.FileOffer); err != nil {
			e.log.Error("record a file offer", "from", from, "err", err)
			return // not acknowledged: it comes again
		}
		e.queueAck(s, from, p.Id, on)
	case *wire.Payload_FileResult:
		e.fileResult(s, from, k.FileResult)
		e.queueAck(s, from, p.Id, on)
	case *wire.Payload_FileCancel:
		e.fileCancelled(s, from, k.FileCancel)
		e.queueAck(s, from, p.Id, on)
	case *wire.Payload_Text:
		if g := k.Text.Group; g != "" && !e.senderInGroup(s, g, from) {
			return
		}
		m := &store.Message{
			ID: p.Id, Peer: from, Group: k.Text.Group, From: from, Body: k.Text.Body,
			Sent: time.Unix(0, p.SentUnixNano), State: store.StateReceived,
		}
		added, err := e.store.AddMessage(m)
		if err != nil {
			e.log.Error("save an incoming message", "err", err)
			return // not acknowledged: the sender will send it again
		}
		// Acknowledged beside, not before, showing it: the one who reads
		// the events runs next, while another goroutine seals and sends the
		// acknowledgement.
		e.queueAck(s, from, p.Id, on)
		if added {
			e.emit(Event{Kind: EventMessage, ID: p.Id, From: from, Group: k.Text.Group, Body: k.Text.Body, Time: m.Sent, Received: time.Now()})
		}
	}
}

// senderInGroup checks a group label: authenticated as from, but is from
// in the group? The label would otherwise put words in a group that never
// heard them. A message that fails is not acknowledged: a member who joined
// a moment ago is asked about again when the message comes back.
func (e *Engine) senderInGroup(s *online, g, from string) bool {
	ok, asked, err := e.bothInGroup(s, g, from)
	if err != nil {
		e.log.Warn("cannot check a group message's sender", "group", g, "from", from, "err", err)
		return false
	}
	if !ok && asked {
		e.emit(Event{Kind: EventSecurity, From: from, Group: g, Text: fmt.Sprintf("rejected a message from %s labelled with group %s: %s is not a member (or you are not)", from, g, from)})
	}
	return ok
}

// memberList is a group's members as the cluster last said.
type memberList struct {
	at      time.Time
	members map[string]bool
}

// bothInGroup reports whether login and this client are both members of
// group, from a list at most a minute old, and whether it asked the
// cluster just now. A sender not on the list sends the question to the
// cluster again (someone who just joined), at most every few seconds per
// group.
func (e *Engine) bothInGroup(s *online, group, login string) (ok, asked bool, err error) {
	key := strings.ToLower(group)
	if c, found := s.groupMembers.Load(key); found {
		l := c.(memberList)
		age := time.Since(l.at)
		if age < time.Minute && l.members[login] && l.members[s.login] {
			return true, false, nil
		}
		if age < 5*time.Second {
			return false, false, nil
		}
	}
	cctx, cancel := e.callCtx(s.ctx, s)
	resp, err := e.coord.Members(cctx, &api.GroupRequest{Name: group})
	cancel()
	switch status.Code(err) {
	case codes.OK:
	case codes.NotFound, codes.InvalidArgument: // no such group
		return false, true, nil
	default:
		return false, false, e.friendly(err)
	}
	l := memberList{at: time.Now(), members: map[string]bool{}}
	for _, m := range resp.LoginIds {
		l.members[m] = true
	}
	s.groupMembers.Store(key, l)
	return l.members[login] && l.members[s.login], true, nil
}

// watchEvents follows the cluster's event stream: new mail is fetched,
// key changes of contacts are checked, group changes are reported. It
// reconnects with backoff.
func (e *Engine) watchEvents(s *online) {
	backoff := api.Backoff{Min: 500 * time.Millisecond, Max: 15 * time.Second}
	for s.ctx.Err() == nil {
		// The stream watches the contacts known when it opens; a new
		// contact reopens it (see contactsChanged).
		if s.getToken() == "" { // logged in offline: wait for the cluster
			select {
			case <-s.ctx.Done():
				return
			case <-s.relogged:
			}
			continue
		}
		sctx, cancel := context.WithCancel(api.WithToken(s.ctx, s.getToken()))
		go func() {
			select {
			case <-s.watchChanged:
				cancel()
			case <-sctx.Done():
			}
		}()
		stream, err := e.coord.Events(sctx, &api.EventsRequest{Tickets: e.watchTickets()})
		if err == nil {
			// The coordinator sends the headers once it is subscribed: mail
			// put from then on raises an event, mail put before is fetched
			// now. Fetching before that could miss one put in between.
			_, err = stream.Header()
		}
		if err == nil {
			e.setConnected(s, true, "")
			e.fetchMail(s)
			for {
				ev, err := stream.Recv()
				if err != nil {
					break
				}
				backoff.Reset()
				switch k := ev.Kind.(type) {
				case *api.Event_Mail:
					e.fetchMail(s)
				case *api.Event_Keys:
					e.forget(s, k.Keys.Keys.GetLoginId())
					if _, err := e.target(s.ctx, s, k.Keys.Keys.GetLoginId(), true); err == nil {
						e.kickQueue(s)
						e.senderOnline(k.Keys.Keys.GetLoginId())
					}
				case *api.Event_Group:
					g := k.Group
					s.groupMembers.Delete(strings.ToLower(g.Name))
					if g.LoginId != s.login {
						e.emit(Event{Kind: EventGroup, Group: g.Name, From: g.LoginId, Text: g.Change})
					}
				}
			}
		}
		reopened := sctx.Err() != nil && s.ctx.Err() == nil
		cancel()
		if !reopened && s.ctx.Err() == nil {
			why := "the cluster ended the event stream"
			if err != nil {
				why = e.friendly(err).Error()
			}
			e.setConnected(s, false, why)
		}
		if reopened {
			backoff.Reset()
			continue
		}
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(backoff.Next()):
		}
	}
}

// watchTickets are the tickets for the people watched (see contacts), as
// many as a stream takes.
func (e *Engine) watchTickets() []*api.WatchTicket {
	var out []*api.WatchTicket
	for _, login := range e.contacts() {
		if t := e.store.WatchTicket(login); t != nil && len(out) < api.MaxWatch {
			out = append(out, &api.WatchTicket{LoginId: login, Ticket: t})
		}
	}
	return out
}

func (e *Engine) contacts() []string {
	q, _ := e.store.Queue()
	seen := map[string]bool{}
	var out []string
	for _, o := range q {
		if !seen[o.To] {
			seen[o.To] = true
			out = append(out, o.To)
		}
	}
	out = append(out, e.store.ContactIDs()...)
	return out
}

// contactsChanged asks the event stream to reopen with the new watch list.
func (e *Engine) contactsChanged() {
	s, err := e.current()
	if err != nil {
		return
	}
	select {
	case s.watchChanged <- struct{}{}:
	default:
	}
}

// setConnected reports the link to the cluster when it changes.
func (e *Engine) setConnected(s *online, up bool, why string) {
	state := int32(linkDown)
	if up {
		state = linkUp
	}
	if s.link.Swap(state) == state {
		return
	}
	if up {
		e.emit(Event{Kind: EventConnection, Text: StatusConnected})
	} else {
		e.emit(Event{Kind: EventConnection, Text: StatusDisconnected, Body: why})
	}
}

// States of a session's link to the cluster (zero: not known yet).
const (
	linkUp = iota + 1
	linkDown
)
