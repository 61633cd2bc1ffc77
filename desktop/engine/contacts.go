package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/command"
	"github.com/e2em/e2em/desktop/engine/e2e"
	"github.com/e2em/e2em/desktop/engine/p2p"
	"github.com/e2em/e2em/desktop/engine/store"
)

type addrUpdated = event.EvtLocalAddressesUpdated

// Errors about contacts, for people.
var (
	ErrKeyChanged = errors.New("identity key changed")
	ErrNoKeys     = errors.New("has not logged in on any device yet, so there is no key to encrypt to")
)

// KeyChangedError says whose key changed and what to do.
type KeyChangedError struct{ Contact string }

func (e *KeyChangedError) Error() string {
	return fmt.Sprintf("%s's identity key changed since you first talked; compare safety numbers (Verify %s) and accept it with Trust %s <safety number> before messages go",
		e.Contact, e.Contact, e.Contact)
}

func (e *KeyChangedError) Unwrap() error { return ErrKeyChanged }

// directoryCacheTTL is how long a looked-up contact is reused before the
// directory is asked again (key changes are also pushed as events).
const directoryCacheTTL = time.Minute

type cachedTarget struct {
	t  p2p.Target
	at time.Time
}

// Resolve turns what a person typed into exactly one login id: a login id,
// a username or a roll number (or "a||b" offering several); no match or
// several are errors that say so.
func (e *Engine) Resolve(ctx context.Context, name string) (string, error) {
	s, err := e.current()
	if err != nil {
		return "", err
	}
	// Someone you already talk to, by login id: no need to ask.
	if c, err := e.store.Contact(name); err == nil {
		return c.LoginID, nil
	}
	found := map[string]bool{}
	for _, q := range command.Alternatives(name) {
		cctx, cancel := e.callCtx(ctx, s)
		resp, err := e.coord.LookUp(cctx, &api.LookUpRequest{Query: q})
		cancel()
		if err != nil {
			return "", e.friendly(err)
		}
		for _, m := range resp.Matches {
			if m.LoginId == q {
				// An exact login id wins over usernames and roll numbers.
				return q, nil
			}
			found[m.LoginId] = true
		}
	}
	var matches []string
	for l := range found {
		matches = append(matches, l)
	}
	sort.Strings(matches)
	switch len(matches) {
	case 0:
		return "", fmt.Errorf("no account is called %q", name)
	case 1:
		return matches[0], nil
	default:
		return "", fmt.Errorf("%q names %d accounts: %s; use the login id", name, len(matches), strings.Join(matches, ", "))
	}
}

// target finds how to reach login and the identity key trusted for it,
// checking the directory entry's signature and the pinned key.
func (e *Engine) target(ctx context.Context, s *online, login string, fresh bool) (*p2p.Target, error) {
	if !fresh {
		if c, ok := s.targets.Load(login); ok && time.Since(c.(cachedTarget).at) < directoryCacheTTL {
			t := c.(cachedTarget).t
			return &t, nil
		}
	}
	k, pid, err := e.entry(ctx, s, login)
	if err != nil {
		return nil, err
	}
	return e.targetFrom(s, login, k, pid)
}

// entry is login's directory entry, its signature checked. It pins
// nothing: a peer that only claims to be login must not make it a contact.
func (e *Engine) entry(ctx context.Context, s *online, login string) (*api.Keys, peer.ID, error) {
	cctx, cancel := e.callCtx(ctx, s)
	resp, err := e.coord.LookUp(cctx, &api.LookUpRequest{Query: login})
	cancel()
	if err != nil {
		return nil, "", e.friendly(err)
	}
	var k *api.Keys
	for i, m := range resp.Matches {
		if m.LoginId == login {
			k = m
			if i < len(resp.WatchTickets) {
				e.keepWatchTicket(login, resp.WatchTickets[i])
			}
		}
	}
	if k == nil {
		return nil, "", fmt.Errorf("no account %s", login)
	}
	if k.PeerId == "" || len(k.IdentityKey) == 0 {
		return nil, "", fmt.Errorf("%s %w", login, ErrNoKeys)
	}
	pid, err := verifyEntry(k)
	if err != nil {
		return nil, "", fmt.Errorf("the directory entry of %s does not check out (%v); not sending", login, err)
	}
	return k, pid, nil
}

// targetFrom pins a checked directory entry's key and caches how to reach
// its owner.
func (e *Engine) targetFrom(s *online, login string, k *api.Keys, pid peer.ID) (*p2p.Target, error) {
	identity, err := e.pin(login, k.IdentityKey, k.PeerId)
	if err != nil {
		return nil, err
	}
	t := p2p.Target{LoginID: login, PeerID: pid, Identity: identity}
	// The directory names only relay circuits; direct addresses come
	// end to end over the first session (p2p.Direct).
	for _, a := range k.RelayAddrs {
		m, err := ma.NewMultiaddr(a)
		if err != nil {
			continue
		}
		// The peerstore wants addresses without the peer's own /p2p/<id>
		// (relay circuit addresses end with it).
		if rest, last := ma.SplitLast(m); last != nil && last.Protocol().Code == ma.P_P2P && last.Value() == k.PeerId {
			m = rest
		}
		t.Addrs = append(t.Addrs, m)
	}
	s.targets.Store(login, cachedTarget{t: t, at: time.Now()})
	return &t, nil
}

// forget drops a cached directory entry (after a failure or a push).
func (e *Engine) forget(s *online, login string) { s.targets.Delete(login) }

// verifyEntry checks that the identity key is signed by the libp2p key the
// peer id names.
func verifyEntry(k *api.Keys) (peer.ID, error) {
	pub, err := crypto.UnmarshalPublicKey(k.Libp2PPublicKey)
	if err != nil {
		return "", err
	}
	pid, err := peer.Decode(k.PeerId)
	if err != nil {
		return "", err
	}
	if !pid.MatchesPublicKey(pub) {
		return "", errors.New("peer id does not match its key")
	}
	ok, err := pub.Verify(api.IdentitySigningPayload(k.LoginId, k.IdentityKey), k.IdentitySignature)
	if err != nil || !ok {
		return "", errors.New("identity key signature is wrong")
	}
	return pid, nil
}

// pin trusts a contact's identity key on first use and refuses a changed
// one until the person accepts it.
func (e *Engine) pin(login string, identity []byte, peerID string) ([]byte, error) {
	c, err := e.store.Contact(login)
	if errors.Is(err, store.ErrNotFound) {
		c = &store.Contact{LoginID: login, Identity: identity, PeerID: peerID, PinnedAt: time.Now()}
		if err := e.store.SaveContact(c); err != nil {
			return nil, err
		}
		e.contactsChanged()
		return identity, nil
	}
	if err != nil {
		return nil, err
	}
	if bytes.Equal(c.Identity, identity) {
		if c.PeerID != peerID || c.PendingIdentity != nil {
			c.PeerID, c.PendingIdentity, c.PendingPeerID = peerID, nil, ""
			e.store.SaveContact(c)
		}
		return identity, nil
	}
	if !bytes.Equal(c.PendingIdentity, identity) {
		c.PendingIdentity, c.PendingPeerID = identity, peerID
		if err := e.store.SaveContact(c); err != nil {
			return nil, err
		}
		e.emit(Event{Kind: EventKeyChanged, Contact: login, Text: (&KeyChangedError{Contact: login}).Error()})
	}
	return nil, &KeyChangedError{Contact: login}
}

// verifyPeer is the p2p.Verifier: someone opened a session claiming to be
// login from libp2p peer p.
func (e *Engine) verifyPeer(ctx context.Context, login string, p peer.ID) ([]byte, error) {
	s, err := e.current()
	if err != nil {
		return nil, errNoSession
	}
	if c, ok := s.targets.Load(login); ok && c.(cachedTarget).t.PeerID == p && time.Since(c.(cachedTarget).at) < directoryCacheTTL {
		return c.(cachedTarget).t.Identity, nil
	}
	// The directory decides who login is; only a peer that is that device
	// (libp2p authenticated its peer id) gets its key pinned.
	k, pid, err := e.entry(ctx, s, login)
	if err != nil {
		return nil, err
	}
	if pid != p {
		return nil, fmt.Errorf("%s is not the device the directory lists for %s", p, login)
	}
	t, err := e.targetFrom(s, login, k, pid)
	if err != nil {
		return nil, err
	}
	return t.Identity, nil
}

// SafetyNumber is what to compare with contact out of band.
func (e *Engine) SafetyNumber(ctx context.Context, contact string) (string, error) {
	s, err := e.current()
	if err != nil {
		return "", err
	}
	login, err := e.Resolve(ctx, contact)
	if err != nil {
		return "", err
	}
	if _, err := e.target(ctx, s, login, true); err != nil && !errors.Is(err, ErrKeyChanged) {
		return "", err
	}
	c, err := e.store.Contact(login)
	if err != nil {
		return "", fmt.Errorf("no key for %s yet", login)
	}
	me := e2e.Party{LoginID: s.login, Identity: s.static.PublicKey().Bytes()}
	key := c.Identity
	note := ""
	if c.PendingIdentity != nil {
		key = c.PendingIdentity
		note = " (for the NEW key, not yet trusted)"
	}
	return e2e.SafetyNumber(me, e2e.Party{LoginID: login, Identity: key}) + note, nil
}

// Trust accepts a contact's changed identity key; held messages then go.
// safetyNumber is the number the person compared (SafetyNumber, spaces
// and words ignored): Trust refuses when it is not the pending key's, so a
// key that changed again after the person looked is never trusted unseen.
func (e *Engine) Trust(ctx context.Context, contact, safetyNumber string) error {
	s, err := e.current()
	if err != nil {
		return err
	}
	login, err := e.Resolve(ctx, contact)
	if err != nil {
		return err
	}
	c, err := e.store.Contact(login)
	if err != nil {
		return fmt.Errorf("you have not talked with %s yet", login)
	}
	if c.PendingIdentity == nil {
		return fmt.Errorf("%s's key has not changed; nothing to trust", login)
	}
	me := e2e.Party{LoginID: s.login, Identity: s.static.PublicKey().Bytes()}
	want := e2e.SafetyNumber(me, e2e.Party{LoginID: login, Identity: c.PendingIdentity})
	if got := digitsOf(safetyNumber); got == "" {
		return &Error{Kind: KindInvalid, Msg: "give the safety number you compared with " + login}
	} else if got != digitsOf(want) {
		return &Error{Kind: KindKeyChanged, Msg: "that is not the safety number of " + login + "'s new key (it may have changed again since you looked); compare the new number before trusting it"}
	}
	c.Identity, c.PeerID = c.PendingIdentity, c.PendingPeerID
	c.PendingIdentity, c.PendingPeerID = nil, ""
	c.PinnedAt = time.Now()
	if err := e.store.SaveContact(c); err != nil {
		return err
	}
	e.forget(s, login)
	e.kickQueue(s)
	e.spawn(s, func(s *online) { e.releaseHeld(s, login) })
	return nil
}

// digitsOf keeps the digits of a safety number as typed or pasted.
func digitsOf(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, s)
}

// keepWatchTicket keeps the ticket that lets this client watch login's key
// changes; a first one reopens the event stream so that it counts.
func (e *Engine) keepWatchTicket(login string, ticket []byte) {
	old := e.store.WatchTicket(login)
	if bytes.Equal(old, ticket) {
		return
	}
	if err := e.store.SetWatchTicket(login, ticket); err != nil {
		e.log.Warn("keep a watch ticket", "contact", login, "err", err)
		return
	}
	if old == nil {
		e.contactsChanged()
	}
}
