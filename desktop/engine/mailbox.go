package engine

import (
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/e2e"
	"github.com/e2em/e2em/desktop/engine/p2p"
	"github.com/e2em/e2em/desktop/engine/store"
	"github.com/e2em/e2em/desktop/engine/wire"
)

// putMail seals a payload as a one-shot envelope for t and leaves it in
// the cluster's mailbox.
func (e *Engine) putMail(s *online, t *p2p.Target, payload []byte) error {
	env, err := e.sealEnvelope(s, t, payload)
	if err != nil {
		return err
	}
	ctx, cancel := e.callCtx(s.ctx, s)
	defer cancel()
	if _, err := e.coord.PutMail(ctx, &api.PutMailRequest{To: t.LoginID, Envelope: env}); err != nil {
		return e.friendly(err)
	}
	return nil
}

// sealEnvelope seals a payload as a one-shot envelope for t.
func (e *Engine) sealEnvelope(s *online, t *p2p.Target, payload []byte) ([]byte, error) {
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	me := e2e.Party{LoginID: s.login, Identity: s.static.PublicKey().Bytes()}
	them := e2e.Party{LoginID: t.LoginID, Identity: t.Identity}
	keys, err := e2e.EnvelopeKeys(true, s.static, eph.PublicKey().Bytes(), eph, me, them)
	if err != nil {
		return nil, err
	}
	rec, err := e2e.Seal(keys, 0, 0, payload, rand.Reader)
	if err != nil {
		return nil, err
	}
	return proto.Marshal(&wire.Envelope{Version: e2e.Version, From: s.login, To: t.LoginID, Ephemeral: eph.PublicKey().Bytes(), Record: rec})
}

// fetchMail reads the mailbox from the cursor on, opens each envelope,
// and acknowledges what it processed so the cluster deletes it.
func (e *Engine) fetchMail(s *online) {
	s.mailMu.Lock()
	defer s.mailMu.Unlock()
	cursor, err := e.store.MailCursor()
	if err != nil {
		return
	}
	start := cursor
	for s.ctx.Err() == nil {
		ctx, cancel := e.callCtx(s.ctx, s)
		resp, err := e.coord.FetchMail(ctx, &api.FetchMailRequest{AfterSeq: cursor, Limit: 100})
		cancel()
		if err != nil {
			e.log.Warn("fetch mail", "err", e.friendly(err))
			break
		}
		if len(resp.Mail) == 0 {
			break
		}
		for _, m := range resp.Mail {
			if err := e.openMail(s, m); errors.Is(err, ErrKeyChanged) {
				// Held here until the person trusts the sender's new
				// key; the mail of everyone else goes on.
				if err := e.store.HoldMail(&store.HeldMail{From: m.From, Seq: m.Seq, Envelope: m.Envelope}); err != nil {
					e.log.Error("hold an envelope", "from", m.From, "err", err)
					return
				}
			}
			cursor = m.Seq
			if err := e.store.SetMailCursor(cursor); err != nil {
				return
			}
		}
	}
	if cursor > start {
		ctx, cancel := e.callCtx(s.ctx, s)
		_, err := e.coord.AckMail(ctx, &api.AckMailRequest{UpToSeq: cursor})
		cancel()
		if err != nil {
			e.log.Warn("acknowledge mail", "err", e.friendly(err))
		}
	}
}

// openMail opens one envelope: the sender's pinned key and the recipient's
// identity key give the one-shot keys; anything that fails is reported and
// skipped.
func (e *Engine) openMail(s *online, m *api.Mail) error {
	var env wire.Envelope
	reject := func(err error) error {
		e.emit(Event{Kind: EventSecurity, From: m.From, Text: fmt.Sprintf("rejected a mailbox message from %s: %v", m.From, err)})
		return nil
	}
	if err := proto.Unmarshal(m.Envelope, &env); err != nil {
		return reject(fmt.Errorf("malformed envelope: %w", err))
	}
	if env.To != s.login || env.From != m.From || env.Version != e2e.Version {
		return reject(errors.New("envelope is addressed wrongly"))
	}
	t, err := e.target(s.ctx, s, env.From, false)
	if err != nil {
		if errors.Is(err, ErrKeyChanged) {
			return err
		}
		return reject(err)
	}
	me := e2e.Party{LoginID: s.login, Identity: s.static.PublicKey().Bytes()}
	sender := e2e.Party{LoginID: env.From, Identity: t.Identity}
	keys, err := e2e.EnvelopeKeys(false, s.static, env.Ephemeral, nil, sender, me)
	if err != nil {
		return reject(err)
	}
	_, pt, err := e2e.Open(keys, env.Record)
	if err != nil {
		return reject(err)
	}
	var p wire.Payload
	if err := proto.Unmarshal(pt, &p); err != nil || p.From != env.From {
		return reject(errors.New("payload does not match its envelope"))
	}
	e.handlePayload(s, env.From, &p, nil)
	return nil
}

// releaseHeld opens what the mailbox brought from login while its key was
// not trusted (after Trust).
func (e *Engine) releaseHeld(s *online, login string) {
	s.mailMu.Lock()
	defer s.mailMu.Unlock()
	held, err := e.store.HeldMailFrom(login)
	if err != nil {
		e.log.Error("read held mail", "from", login, "err", err)
		return
	}
	for _, h := range held {
		if err := e.openMail(s, &api.Mail{Seq: h.Seq, From: h.From, Envelope: h.Envelope}); errors.Is(err, ErrKeyChanged) {
			return // changed again meanwhile: still held
		}
		if err := e.store.ReleaseMail(h.From, h.Seq); err != nil {
			e.log.Error("release held mail", "from", login, "err", err)
			return
		}
	}
}
