package engine

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/p2p"
	"github.com/e2em/e2em/desktop/engine/store"
)

// Login signs in, unlocks (or on first use creates) the identity keys,
// starts the libp2p host with relay reservations, publishes the keys and
// addresses, fetches waiting mail and sends what is queued.
//
// Offline first: when the cluster cannot be reached and this profile is
// the person's already, the password is checked against the profile's own
// keys and the log-in goes on without the cluster: history and contacts
// are there, what is sent is queued, a connection event says the cluster
// is away, and the engine logs in to the cluster by itself when it is
// back.
func (e *Engine) Login(ctx context.Context, loginID, password string) error {
	if e.LoginID() != "" {
		return ErrLoggedIn
	}
	if len(password) > api.MaxPasswordLen {
		return &Error{Kind: KindUnauthenticated, Msg: "wrong login id or password"}
	}
	loginID = api.NormalizeLoginID(loginID)
	secret := api.AuthSecret(loginID, password)
	// A profile made before opens now (its password is checked here, which
	// is what lets the log-in go on offline); a new one is made only once
	// the cluster accepted the password, so a typo cannot seal it.
	owner := ""
	if store.Sealed(e.cfg.Profile) {
		if err := e.unlockProfile(password); err != nil {
			return err
		}
		var err error
		if owner, err = e.profile().Owner(); err != nil {
			return err
		}
	}
	if owner != "" && owner != loginID {
		return &Error{Kind: KindProfileOwned, Msg: fmt.Sprintf("this profile belongs to %s, not %s", owner, loginID)}
	}
	// A session this profile kept from an earlier run goes on where it is
	// still valid: the cluster hashes no password for it.
	var resp *api.LogInResponse
	var err error
	if owner == loginID {
		resp, err = e.resume(ctx, loginID)
	}
	if resp == nil && err == nil {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		resp, err = e.logIn(cctx, loginID, secret)
		cancel()
	}
	offline := false
	if err != nil {
		err = e.friendly(err)
		if k := KindOf(err); (k != KindUnreachable && k != KindTimeout) || owner != loginID {
			return err
		}
		offline = true
		resp = &api.LogInResponse{LoginId: loginID}
	}
	loginID = resp.LoginId
	if err := e.unlockProfile(password); err != nil {
		return err
	}
	e.keepSession(loginID, resp)
	id, err := e.loadOrCreateIdentity(loginID, password, owner == "")
	// argon2id took 64 MiB for a moment: give it back now, or the garbage
	// collector's next goal is sized after it and the process keeps twice
	// that for as long as it runs (a file transfer's churn fills it).
	debug.FreeOSMemory()
	if err != nil {
		return err
	}
	key, err := crypto.UnmarshalPrivateKey(id.Libp2p)
	if err != nil {
		return fmt.Errorf("profile identity: %w", err)
	}
	static, err := ecdh.X25519().NewPrivateKey(id.X25519)
	if err != nil {
		return fmt.Errorf("profile identity: %w", err)
	}
	sockets := p2p.NewUDPSockets()
	h, err := p2p.NewHost(p2p.HostConfig{Key: key, Port: e.cfg.Port, Listen: e.cfg.Listen, RelayOnly: e.cfg.RelayOnly, Sockets: sockets, Log: e.log})
	if err != nil {
		return err
	}
	sctx, scancel := context.WithCancel(context.Background())
	s := &online{
		login: loginID, static: static, key: key, host: h, relogged: make(chan struct{}, 1),
		ctx: sctx, cancel: scancel, kick: make(chan struct{}, 1), inflight: newInflight(),
		watchChanged: make(chan struct{}, 1), states: make(chan stateUpdate, 4096),
		acks: ackQueue{pending: map[ackRoute][]string{}},
	}
	s.setToken(resp.Token)
	s.setObserved(resp.ObservedAddr)
	if !e.cfg.RelayOnly {
		if s.holePunch, err = p2p.StartHolePunching(h, s.observedIP, e.log); err != nil {
			e.log.Warn("no hole punching", "err", err)
		}
	}
	s.msgr = p2p.NewMessenger(h, p2p.Self{LoginID: loginID, Static: static}, e.verifyPeer, &handler{e: e}, e.log)
	relays, err := e.relays(ctx)
	if err != nil {
		e.log.Warn("no relays from the cluster", "err", err)
	}
	// The relays admit only devices published in the directory: they get
	// their list once the keys are out (below).
	s.relays = p2p.NewRelays(sctx, h, nil, e.cfg.RelaysPerPeer, e.log)
	if !e.cfg.RelayOnly {
		// Addresses go to the people this client talks with, end to end,
		// never to the directory.
		s.msgr.SetDirect(p2p.NewDirect(p2p.DirectConfig{
			Host: h, Sockets: sockets, NAT: p2p.ObserveNAT(h, s.relays.IsRelay),
			Observed: s.observedIP, QUICPort: p2p.QUICPort(h), Log: e.log,
		}))
	}
	e.mu.Lock()
	e.online = s
	e.mu.Unlock()
	// Files are served before the keys go out: a recipient waiting for
	// this client fetches as soon as it sees them.
	p2p.ServeFiles(s.ctx, h, e.serveFile(s), e.log)
	if offline {
		e.setConnected(s, false, fmt.Sprintf("the e2em cluster at %s is unreachable; working offline until it is back", e.cfg.LB))
		e.spawn(s, func(s *online) { e.reconnect(s, secret) })
	} else if err := e.publishKeys(ctx, s); err != nil {
		e.stopSession()
		return err
	}
	s.relays.SetRelays(relays)
	if len(relays) > 0 && !offline {
		// Publish again with a relay circuit when one can be had quickly,
		// so people behind NATs can be reached from the first message on.
		select {
		case <-s.relays.Changed():
			if err := e.publishKeys(ctx, s); err != nil {
				e.log.Warn("could not publish the relay addresses", "err", err)
			}
		case <-time.After(3 * time.Second):
		}
	}
	// Messages queued before this log-in go first, through the delivery
	// loop; the fast path waits for them.
	if q, err := e.store.Queue(); err == nil {
		for _, o := range q {
			s.held.Store(o.To, true)
		}
	}
	e.spawn(s, e.recordStates)
	e.spawn(s, e.republish)
	e.spawn(s, e.watchEvents)
	e.spawn(s, e.deliverLoop)
	e.resumeIncoming(s)
	e.resumeOutgoing(s)
	e.log.Info("logged in", "login_id", loginID, "peer_id", h.ID(), "addrs", p2p.ListenAddrs(h))
	e.emit(Event{Kind: EventLogin, Text: StatusLoggedIn, From: loginID})
	return nil
}

// reconnect logs in to the cluster after an offline log-in, with backoff,
// until it works: then the keys are published, the relays reserved, and
// the event stream (waiting on relogged) opens.
func (e *Engine) reconnect(s *online, secret string) {
	backoff := api.Backoff{Min: time.Second, Max: 30 * time.Second}
	for s.ctx.Err() == nil {
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(backoff.Next()):
		}
		cctx, cancel := context.WithTimeout(s.ctx, 15*time.Second)
		resp, err := e.logIn(cctx, s.login, secret)
		cancel()
		if err != nil {
			if k := KindOf(e.friendly(err)); k == KindUnreachable || k == KindTimeout || k == KindRateLimited {
				continue
			}
			// Refused by the cluster (the password changed elsewhere?):
			// stay offline, and say so.
			e.setConnected(s, false, "the cluster refused this log-in: "+e.friendly(err).Error())
			return
		}
		s.setToken(resp.Token)
		s.setObserved(resp.ObservedAddr)
		e.keepSession(s.login, resp)
		// Keys first: the relays admit only published devices.
		if err := e.publishKeys(s.ctx, s); err != nil {
			e.log.Warn("publish keys after reconnecting", "err", err)
		}
		if relays, err := e.relays(s.ctx); err == nil {
			s.relays.SetRelays(relays)
		}
		select {
		case s.relogged <- struct{}{}:
		default:
		}
		e.kickQueue(s)
		e.log.Info("logged in to the cluster after working offline", "login_id", s.login)
		return
	}
}

// logIn asks the cluster to log in, waiting out a busy cluster: an answer
// that says when to come back (the coordinators' hash queue is full) is
// tried again then, with jitter so that a crowd does not come back at
// once, while ctx allows.
//
// The device ticket the profile kept goes with it: this device's failures
// then count against it alone, and other people's failures from the same
// address do not hold it back.
func (e *Engine) logIn(ctx context.Context, loginID, secret string) (*api.LogInResponse, error) {
	var ticket []byte
	if p := e.profile(); p != nil {
		if owner, _ := p.Owner(); owner == loginID {
			ticket, _ = p.DeviceTicket()
		}
	}
	for {
		resp, err := e.coord.LogIn(ctx, &api.LogInRequest{LoginId: loginID, Password: secret, DeviceTicket: ticket})
		after, busy := api.RetryAfter(err)
		if err == nil || status.Code(err) != codes.ResourceExhausted || !busy {
			return resp, err
		}
		wait := api.Jitter(after)
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			return nil, err
		}
		e.log.Info("the cluster is busy with log-ins; trying again", "in", wait.Round(time.Millisecond))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, err
		}
	}
}

// resumeMargin is how long a kept session must still be valid to be used.
const resumeMargin = time.Hour

// resume checks the session the profile kept for loginID with one cheap
// authenticated call and returns it as a log-in's answer; nil and no error
// when there is none to use (none kept, nearly expired, or refused: then
// it is forgotten) and a password log-in must decide; the error when the
// cluster cannot be reached (the log-in goes on offline).
func (e *Engine) resume(ctx context.Context, loginID string) (*api.LogInResponse, error) {
	ss, err := e.profile().SavedSession()
	if err != nil || ss.Token == "" || ss.LoginID != loginID || time.Until(ss.Expires) < resumeMargin {
		return nil, nil
	}
	cctx, cancel := context.WithTimeout(api.WithToken(ctx, ss.Token), 30*time.Second)
	defer cancel()
	if _, err := e.coord.MyGroups(cctx, &api.ListGroupsRequest{PageSize: 1}); err != nil {
		switch KindOf(e.friendly(err)) {
		case KindUnreachable, KindTimeout:
			return nil, err
		case KindUnauthenticated:
			e.profile().ForgetSession()
		}
		return nil, nil
	}
	e.log.Info("resumed the session kept in the profile; no password hash on the cluster", "login_id", loginID)
	return &api.LogInResponse{LoginId: loginID, Token: ss.Token, ExpiresUnix: ss.Expires.Unix()}, nil
}

// keepSession saves a log-in's session in the profile for the next run.
func (e *Engine) keepSession(loginID string, resp *api.LogInResponse) {
	if resp.Token == "" || resp.ExpiresUnix == 0 {
		return
	}
	p := e.profile()
	if p == nil {
		return
	}
	if err := p.SaveSession(store.SavedSession{LoginID: loginID, Token: resp.Token, Expires: time.Unix(resp.ExpiresUnix, 0)}); err != nil {
		e.log.Warn("could not keep the session in the profile", "err", err)
	}
	if len(resp.DeviceTicket) > 0 {
		if err := p.SaveDeviceTicket(resp.DeviceTicket); err != nil {
			e.log.Warn("could not keep the device ticket in the profile", "err", err)
		}
	}
}

func (s *online) setToken(t string) {
	s.tokenMu.Lock()
	s.token = t
	s.tokenMu.Unlock()
}

func (s *online) getToken() string {
	s.tokenMu.Lock()
	defer s.tokenMu.Unlock()
	return s.token
}

func (e *Engine) spawn(s *online, f func(*online)) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f(s)
	}()
}

func (e *Engine) loadOrCreateIdentity(loginID, password string, create bool) (*store.Identity, error) {
	if !create {
		id, err := e.store.LoadIdentity(password)
		if err != nil {
			return nil, err
		}
		return id, nil
	}
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, err
	}
	kb, err := crypto.MarshalPrivateKey(key)
	if err != nil {
		return nil, err
	}
	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	id := &store.Identity{LoginID: loginID, Libp2p: kb, X25519: x.Bytes()}
	if err := e.store.SaveIdentity(id, password); err != nil {
		return nil, fmt.Errorf("save identity keys: %w", err)
	}
	return id, nil
}

func (e *Engine) relays(ctx context.Context) ([]peer.AddrInfo, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := e.coord.Relays(cctx, &api.RelaysRequest{})
	if err != nil {
		return nil, e.friendly(err)
	}
	var out []peer.AddrInfo
	for _, r := range resp.Relays {
		infos, err := p2p.ParseAddrInfo(r.Addrs)
		if err != nil {
			continue
		}
		out = append(out, infos...)
	}
	return out, nil
}

// publishKeys puts this client's keys and current addresses in the
// directory: the identity key, signed by the libp2p key the peer id names.
func (e *Engine) publishKeys(ctx context.Context, s *online) error {
	// Only circuits: direct addresses go end to end (p2p.Direct).
	keys, err := api.SignedKeys(s.login, s.key, s.static.PublicKey().Bytes(), s.relays.CircuitAddrs())
	if err != nil {
		return err
	}
	cctx, cancel := e.callCtx(ctx, s)
	defer cancel()
	resp, err := e.coord.PublishKeys(cctx, &api.PublishKeysRequest{Keys: keys})
	if err != nil {
		return fmt.Errorf("publish keys: %w", e.friendly(err))
	}
	s.setObserved(resp.ObservedAddr)
	return nil
}

// republish keeps the directory current as relay reservations and
// addresses change.
func (e *Engine) republish(s *online) {
	sub, err := s.host.EventBus().Subscribe(new(addrUpdated))
	var addrCh <-chan interface{}
	if err == nil {
		defer sub.Close()
		addrCh = sub.Out()
	}
	var retry <-chan time.Time
	backoff := api.Backoff{Min: time.Second, Max: 30 * time.Second}
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.relays.Changed():
		case <-addrCh:
		case <-retry:
		}
		retry = nil
		if err := e.publishKeys(s.ctx, s); err != nil && s.ctx.Err() == nil {
			// A coordinator lost (its relay with it) can mean an
			// election under way: the entry must not keep naming a dead
			// relay, so try again.
			wait := backoff.Next()
			e.log.Warn("could not update the directory; trying again", "err", err, "in", wait.Round(time.Millisecond))
			retry = time.After(wait)
		} else {
			backoff.Reset()
		}
	}
}

// Logout ends the session on the cluster and stops the network side. What
// is queued stays queued for the next log-in.
func (e *Engine) Logout(ctx context.Context) error {
	s, err := e.current()
	if err != nil {
		return err
	}
	cctx, cancel := e.callCtx(ctx, s)
	_, lerr := e.coord.LogOut(cctx, &api.LogOutRequest{})
	cancel()
	if p := e.profile(); p != nil {
		if err := p.ForgetSession(); err != nil {
			e.log.Warn("could not forget the session", "err", err)
		}
	}
	e.stopSession()
	if lerr != nil {
		return fmt.Errorf("logged out here, but the cluster did not hear it: %w", e.friendly(lerr))
	}
	return nil
}

func (e *Engine) stopSession() {
	e.mu.Lock()
	s := e.online
	e.online = nil
	e.mu.Unlock()
	if s == nil {
		return
	}
	s.cancel()
	s.msgr.Close()
	s.wg.Wait()
	e.closeIncomingFiles()
	e.closeSources()
	if s.holePunch != nil {
		s.holePunch.Close()
	}
	s.host.Close()
	e.emit(Event{Kind: EventLogin, Text: StatusLoggedOut, From: s.login})
}

// setObserved remembers the IP the cluster sees this client at (its NAT's
// public address when behind one).
func (s *online) setObserved(addr string) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return
	}
	if ip := net.ParseIP(host); ip != nil {
		s.observed.Store(ip)
	}
}

func (s *online) observedIP() net.IP {
	ip, _ := s.observed.Load().(net.IP)
	return ip
}

var errNoSession = errors.New("no session")
