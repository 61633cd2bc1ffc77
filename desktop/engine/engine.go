// Package engine is the e2em client without a face: account, identity
// keys, contacts and their pinned keys, conversations, groups and the
// outgoing queue. It talks to the cluster only through coord/api and to
// other people through desktop/engine/p2p, encrypts with
// desktop/engine/e2e, keeps everything in desktop/engine/store, and reports
// what happens as Events that the desktop app and the headless client
// render. It imports no GUI.
package engine

import (
	"context"
	"crypto/ecdh"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/downloads"
	"github.com/e2em/e2em/desktop/engine/p2p"
	"github.com/e2em/e2em/desktop/engine/store"
)

// Config says where the profile and the cluster are.
type Config struct {
	Profile string // profile folder
	LB      string // balancer (or coordinator) host:port
	CAFile  string // cluster CA certificate
	Port    int    // libp2p port; 0 picks any
	Listen  string // IP for libp2p to listen on; default all
	Log     *slog.Logger
	// DirectTimeout is how long a direct or relayed delivery may take
	// before the message goes to the mailbox instead.
	DirectTimeout time.Duration
	// AckTimeout is how long a message sent on a session may wait for the
	// recipient's acknowledgement before it is sent again via the mailbox.
	AckTimeout time.Duration
	// RelayOnly hides this machine's addresses: only relay circuits are
	// published or told to peers, so contacts reach it through the
	// coordinators' relays and never learn its IP.
	RelayOnly bool
	// RelaysPerPeer is how many relays this client reserves on
	// (default p2p.RelaysPerPeer; negative: all of them).
	RelaysPerPeer int
	// Downloads is where received files land (default: the profile's
	// downloads folder).
	Downloads string
	// MailboxFileMax is the largest file sent through the mailbox to a
	// recipient who is offline; larger ones wait until both are online.
	MailboxFileMax int64
}

// Engine is one signed-in (or signing-in) client.
type Engine struct {
	lock   *store.ProfileLock // this process holds the profile folder
	cfg    Config
	log    *slog.Logger
	store  *store.Store
	conn   *grpc.ClientConn
	coord  api.CoordinatorClient
	events *eventLog

	defaultOnce sync.Once
	defaultSub  *Subscription // behind Events

	xfers     *transferTable
	downloads *downloads.Folder

	mu     sync.Mutex
	online *online // nil until Login
}

// online is what exists while someone is logged in: the token the
// cluster gave, the unlocked keys, the libp2p host and every loop that
// runs for them. (Not "session": that word means the encrypted p2p
// session with a contact, and the cluster's log-in.)
type online struct {
	login   string
	tokenMu sync.Mutex
	token   string // "" until the cluster took the log-in (see reconnect)
	// relogged wakes the event stream when an offline log-in reaches the
	// cluster.
	relogged chan struct{}
	static   *ecdh.PrivateKey
	key      crypto.PrivKey
	host     host.Host
	relays   *p2p.Relays
	msgr     *p2p.Messenger
	cancel   context.CancelFunc
	ctx      context.Context
	kick     chan struct{}
	// watchChanged reopens the cluster event stream (new contacts).
	watchChanged chan struct{}
	inflight     *inflight
	targets      sync.Map         // login → cachedTarget: directory entries in use
	waiting      sync.Map         // reasons already reported for held messages
	observed     atomic.Value     // net.IP the cluster sees this client at
	sending      sync.Map         // recipient → *sync.Mutex (see recipientLock)
	held         sync.Map         // recipients whose queued messages wait
	groupMembers sync.Map         // lower-case group → memberList (see inGroup)
	holePunch    *p2p.HolePuncher // nil when hole punching is off
	quiet        sync.Map         // ids of queued file offers and controls: no sent/delivered events
	presence     sync.Map         // login → the presence last reported
	link         atomic.Int32     // linkUp, linkDown, or 0 before the first report
	states       chan stateUpdate // delivery states to record (see markSent)
	acks         ackQueue         // acknowledgements to send (see queueAck)
	mailMu       sync.Mutex
	wg           sync.WaitGroup
}

// New opens the profile and prepares a connection to the cluster (made on
// first use, so starting offline works).
func New(cfg Config) (*Engine, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.RelaysPerPeer == 0 {
		cfg.RelaysPerPeer = p2p.RelaysPerPeer
	}
	if cfg.DirectTimeout == 0 {
		cfg.DirectTimeout = 8 * time.Second
	}
	if cfg.AckTimeout == 0 {
		cfg.AckTimeout = 15 * time.Second
	}
	if cfg.Downloads == "" {
		cfg.Downloads = filepath.Join(cfg.Profile, "downloads")
	}
	if cfg.MailboxFileMax == 0 {
		cfg.MailboxFileMax = DefaultMailboxFileMax
	}
	folder, err := downloads.Open(cfg.Downloads)
	if err != nil {
		return nil, err
	}
	// The profile is claimed now; it is opened (it is encrypted under the
	// password) at log-in.
	lock, err := store.Lock(cfg.Profile)
	if err != nil {
		return nil, err
	}
	conn, err := api.Dial(cfg.LB, cfg.CAFile)
	if err != nil {
		lock.Release()
		return nil, fmt.Errorf("cluster address %s: %w", cfg.LB, err)
	}
	return &Engine{cfg: cfg, log: cfg.Log, lock: lock, conn: conn, coord: api.NewCoordinatorClient(conn),
		events: newEventLog(), xfers: newTransferTable(), downloads: folder}, nil
}

// Downloads is the folder received files land in.
func (e *Engine) Downloads() string { return e.downloads.Dir() }

// Events is one subscription's channel, made on first call with every
// event still kept, for a face that reads events in one place (Subscribe
// gives each reader its own).
func (e *Engine) Events() <-chan Event {
	e.defaultOnce.Do(func() { e.defaultSub = e.subscribe(0) })
	return e.defaultSub.Events()
}

func (e *Engine) emit(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	e.events.add(ev)
}

// Close logs out locally, ends every subscription and closes the profile.
func (e *Engine) Close() error {
	e.stopSession()
	e.events.close()
	e.conn.Close()
	defer e.lock.Release()
	if st := e.profile(); st != nil {
		return st.Close()
	}
	return nil
}

// profile is the open profile, or nil before the first log-in (it is
// encrypted under the password).
func (e *Engine) profile() *store.Store {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.store
}

// unlockProfile opens the profile under password (creating it when new)
// and loads what it keeps; later log-ins reuse it.
func (e *Engine) unlockProfile(password string) error {
	if e.profile() != nil {
		return nil
	}
	st, err := store.OpenSealed(e.cfg.Profile, password)
	if errors.Is(err, store.ErrWrongPassword) {
		return &Error{Kind: KindUnauthenticated, Msg: "wrong password for this profile", Err: err}
	}
	if err != nil {
		return err
	}
	if err := e.xfers.load(st); err != nil {
		st.Close()
		return err
	}
	e.mu.Lock()
	e.store = st
	e.mu.Unlock()
	return nil
}

// LoginID is who is logged in, or "".
func (e *Engine) LoginID() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.online == nil {
		return ""
	}
	return e.online.login
}

func (e *Engine) current() (*online, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.online == nil {
		return nil, ErrNotLoggedIn
	}
	return e.online, nil
}

// callCtx attaches the session token to a call with a deadline.
func (e *Engine) callCtx(ctx context.Context, s *online) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	return api.WithToken(ctx, s.getToken()), cancel
}

// Session is the live encrypted session with a contact, or nil. It is for
// diagnostics and for tests that play an attacker on the wire.
func (e *Engine) Session(login string) *p2p.Session {
	s, err := e.current()
	if err != nil {
		return nil
	}
	return s.msgr.Session(login)
}

// Host is the libp2p host while someone is logged in, or nil. It is for
// diagnostics and for tests that play an attacker on the wire.
func (e *Engine) Host() host.Host {
	s, err := e.current()
	if err != nil {
		return nil
	}
	return s.host
}

// SignUp creates an account and returns its login id.
func (e *Engine) SignUp(ctx context.Context, username, roll, password string) (string, error) {
	if err := checkPassword(password); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// The cluster gets a secret derived from the password, never the
	// password (which also locks this profile's keys).
	secret := api.AuthSecret(api.NormalizeLoginID(username)+roll, password)
	resp, err := e.coord.SignUp(ctx, &api.SignUpRequest{Username: username, RollNumber: roll, Password: secret})
	if err != nil {
		return "", e.friendly(err)
	}
	return resp.LoginId, nil
}

// PrivateFiles makes what this process writes from now on (the profile,
// downloads, logs) readable by its owner only. The apps call it first.
func PrivateFiles() { unix.Umask(0o077) }

// checkPassword applies the password rules here, where the password is
// typed: the cluster only ever sees the secret derived from it.
func checkPassword(password string) error {
	if err := api.ValidatePassword(password); err != nil {
		return &Error{Kind: KindInvalid, Msg: err.Error()}
	}
	return nil
}
