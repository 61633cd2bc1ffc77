// Package loadgen owns the simulated people of the capacity tests and
// benchmarks (issue 14). Each one is a real client at the wire level, as
// the desktop engine is, without a window or a profile: its own TLS
// connection through the balancer from its own loopback address, a real
// log-in (argon2id on the cluster), real keys in the directory, a libp2p
// host holding relay reservations on the relays its rendezvous hash picks
// (p2p.Relays, the engine's own), and an Events stream held open, on which
// mail is noticed, fetched and acknowledged.
package loadgen

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/p2p"
)

// Password is every simulated person's password.
const Password = "password123"

// Crowd is a set of simulated people talking to one cluster.
type Crowd struct {
	LB     string // the balancer's address
	CAFile string // the cluster CA
	// PerAddress is how many people share a loopback source address (a
	// household or a small NAT); 0 means 40.
	PerAddress int
	// Relays is how many relays each person reserves on (p2p.RelaysPerPeer
	// when 0); negative: none (no libp2p host at all).
	Relays int

	mu     sync.Mutex
	People []*Person
	// MailSeen is told each mail notification's arrival.
	mailSeen func(to string, seq uint64, at time.Time)
}

// Person is one simulated person.
type Person struct {
	crowd *Crowd
	Index int
	Login string
	IP    string

	mu     sync.Mutex
	conn   *grpc.ClientConn
	client api.CoordinatorClient
	token  string
	ticket []byte
	cancel context.CancelFunc // the held Events stream
	// streamUp is closed once the Events stream answered its headers.
	streamUp chan struct{}

	Host   host.Host
	relays *p2p.Relays
	key    crypto.PrivKey
	static *ecdh.PrivateKey
	stopP  context.CancelFunc
}

// Username is the name person i signs up with: letters only, because a
// username may not end in a digit (the roll number follows it).
func Username(i int) string {
	const letters = "abcdefghijklmnopqrstuvwxyz"
	b := []byte("load")
	for n := i; ; n /= 26 {
		b = append(b, letters[n%26])
		if n < 26 {
			break
		}
	}
	return string(b)
}

// Add makes people index from..to-1 (not yet signed up).
func (c *Crowd) Add(from, to int) []*Person {
	per := c.PerAddress
	if per <= 0 {
		per = 40
	}
	out := make([]*Person, 0, to-from)
	for i := from; i < to; i++ {
		a := i / per
		// 127.2.0.0/16 and up: away from the 127.0.0.x the tests use.
		ip := fmt.Sprintf("127.%d.%d.%d", 2+a/65536, (a/256)%256, 1+a%250)
		out = append(out, &Person{crowd: c, Index: i, Login: Username(i) + "1", IP: ip})
	}
	c.mu.Lock()
	c.People = append(c.People, out...)
	c.mu.Unlock()
	return out
}

// OnMail sets what hears each mail notification (before any stream opens).
func (c *Crowd) OnMail(f func(to string, seq uint64, at time.Time)) { c.mailSeen = f }

// Each runs f for every item of ps (people, or anything), par at a time, and returns the
// errors (nil for those that worked) in ps's order.
func Each[T any](ps []T, par int, f func(T) error) []error {
	errs := make([]error, len(ps))
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i, p := range ps {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = f(p)
		})
	}
	wg.Wait()
	return errs
}

// FirstError is the first non-nil error, with how many there were.
func FirstError(errs []error) error {
	n := 0
	var first error
	for _, err := range errs {
		if err != nil {
			if first == nil {
				first = err
			}
			n++
		}
	}
	if first == nil {
		return nil
	}
	return fmt.Errorf("%d of %d failed; the first: %w", n, len(errs), first)
}

// Connect opens the person's own TLS connection through the balancer,
// from its own loopback address.
func (p *Person) Connect() error {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(p.IP)}}
	conn, err := api.Dial(p.crowd.LB, p.crowd.CAFile, grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", a)
	}))
	if err != nil {
		return err
	}
	p.mu.Lock()
	old := p.conn
	p.conn, p.client = conn, api.NewCoordinatorClient(conn)
	p.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Client is the person's coordinator client (Connect first).
func (p *Person) Client() api.CoordinatorClient {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.client
}

// Token is the person's session token.
func (p *Person) Token() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.token
}

// Authed is ctx carrying the person's session token.
func (p *Person) Authed(ctx context.Context) context.Context {
	p.mu.Lock()
	defer p.mu.Unlock()
	return api.WithToken(ctx, p.token)
}

// SignUp makes the person's account.
func (p *Person) SignUp(ctx context.Context) error {
	_, err := busyRetry(ctx, func() (*api.SignUpResponse, error) {
		return p.Client().SignUp(ctx, &api.SignUpRequest{Username: Username(p.Index), RollNumber: "1", Password: Password})
	})
	if err != nil {
		return fmt.Errorf("sign up %s: %w", p.Login, err)
	}
	return nil
}

// LogIn logs in with the password (one argon2id hash on the cluster),
// coming back when told the cluster is busy, with jitter as the engine
// does, while ctx lasts.
func (p *Person) LogIn(ctx context.Context) error {
	p.mu.Lock()
	ticket := p.ticket
	p.mu.Unlock()
	resp, err := busyRetry(ctx, func() (*api.LogInResponse, error) {
		return p.Client().LogIn(ctx, &api.LogInRequest{LoginId: p.Login, Password: Password, DeviceTicket: ticket})
	})
	if err != nil {
		return fmt.Errorf("log in %s: %w", p.Login, err)
	}
	p.mu.Lock()
	p.token, p.ticket = resp.Token, resp.DeviceTicket
	p.mu.Unlock()
	return nil
}

// busyRetry calls f again after the time a ResourceExhausted answer with
// a retry time names, times a random 0.5–1.5.
func busyRetry[T any](ctx context.Context, f func() (T, error)) (T, error) {
	for {
		v, err := f()
		after, busy := api.RetryAfter(err)
		if err == nil || status.Code(err) != codes.ResourceExhausted || !busy {
			return v, err
		}
		select {
		case <-time.After(api.Jitter(after)):
		case <-ctx.Done():
			return v, err
		}
	}
}

// Resume checks the kept session with one cheap call, as a restarted
// engine does: no password hash.
func (p *Person) Resume(ctx context.Context) error {
	if _, err := p.Client().MyGroups(p.Authed(ctx), &api.ListGroupsRequest{PageSize: 1}); err != nil {
		return fmt.Errorf("resume %s: %w", p.Login, err)
	}
	return nil
}

// StartHost starts the person's libp2p host (TCP only, no listening
// address: behind a NAT, reachable only through its relays) and keeps
// reservations on its share of relays.
func (p *Person) StartHost(relays []peer.AddrInfo) error {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return err
	}
	static, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	h, err := libp2p.New(libp2p.Identity(key), libp2p.NoListenAddrs, libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ResourceManager(&network.NullResourceManager{}), libp2p.DisableMetrics(), libp2p.EnableRelay())
	if err != nil {
		return fmt.Errorf("libp2p host for %s: %w", p.Login, err)
	}
	want := p.crowd.Relays
	if want == 0 {
		want = p2p.RelaysPerPeer
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.Host, p.key, p.static, p.stopP = h, key, static, cancel
	// Published before reserving: the relays admit directory devices only.
	if err := p.Publish(ctx); err != nil {
		return err
	}
	p.relays = p2p.NewRelays(ctx, h, nil, want, slog.New(slog.DiscardHandler))
	p.relays.SetRelays(relays)
	return nil
}

// Reserved is how many relays hold a reservation for the person.
func (p *Person) Reserved() int {
	if p.relays == nil {
		return 0
	}
	return p.relays.Reserved()
}

// Circuits are the person's relay circuit addresses.
func (p *Person) Circuits() []string {
	if p.relays == nil {
		return nil
	}
	return p.relays.CircuitAddrs()
}

// Publish puts the person's keys and relay circuits in the directory.
func (p *Person) Publish(ctx context.Context) error {
	keys, err := api.SignedKeys(p.Login, p.key, p.static.PublicKey().Bytes(), p.Circuits())
	if err != nil {
		return err
	}
	if _, err := p.Client().PublishKeys(p.Authed(ctx), &api.PublishKeysRequest{Keys: keys}); err != nil {
		return fmt.Errorf("publish %s: %w", p.Login, err)
	}
	return nil
}

// HoldEvents opens the person's Events stream and keeps reading it until
// Close or the next HoldEvents: each mail notification is told to the
// crowd's OnMail, then the mail is fetched and acknowledged. It returns
// once the coordinator has answered the stream's headers.
func (p *Person) HoldEvents(ctx context.Context) error {
	sctx, cancel := context.WithCancel(context.Background())
	stream, err := p.Client().Events(p.Authed(sctx), &api.EventsRequest{})
	if err == nil {
		// The coordinator sends the headers once the stream is subscribed.
		stop := context.AfterFunc(ctx, cancel)
		_, err = stream.Header()
		stop()
	}
	if err != nil {
		cancel()
		return fmt.Errorf("events stream of %s: %w", p.Login, err)
	}
	p.mu.Lock()
	if p.cancel != nil {
		p.cancel()
	}
	p.cancel = cancel
	p.mu.Unlock()
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				return
			}
			m := ev.GetMail()
			if m == nil {
				continue
			}
			if f := p.crowd.mailSeen; f != nil {
				f(p.Login, m.Seq, time.Now())
			}
			fctx, fcancel := context.WithTimeout(p.Authed(sctx), 30*time.Second)
			if got, err := p.Client().FetchMail(fctx, &api.FetchMailRequest{Limit: 100}); err == nil && len(got.Mail) > 0 {
				p.Client().AckMail(fctx, &api.AckMailRequest{UpToSeq: got.Mail[len(got.Mail)-1].Seq})
			}
			fcancel()
		}
	}()
	return nil
}

// Disconnect drops the person's cluster connection and stream, as a
// network change or a crash does; the session and the libp2p host stay.
func (p *Person) Disconnect() {
	p.mu.Lock()
	if p.cancel != nil {
		p.cancel()
		p.cancel = nil
	}
	conn := p.conn
	p.conn, p.client = nil, nil
	p.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
}

// Reconnect brings every person in ps back at once on the session each
// holds, as apps do after a network change or a cluster restart: a new
// connection, one cheap call to check the session (no password hash), the
// Events stream again. Like the app's event watch, a person who fails
// tries again after a jittered, doubling wait (api.Backoff, the engine's
// schedule) until ctx ends (a minute here when ctx has no deadline). It
// returns the wall time until all are back, and the last failure of each
// who did not come back.
func Reconnect(ctx context.Context, ps []*Person) (time.Duration, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Minute)
		defer cancel()
	}
	start := time.Now()
	err := FirstError(Each(ps, max(len(ps), 1), func(p *Person) error {
		backoff := api.Backoff{Min: 500 * time.Millisecond, Max: 15 * time.Second}
		for {
			err := p.comeBack(ctx)
			if err == nil {
				return nil
			}
			select {
			case <-ctx.Done():
				return err
			case <-time.After(backoff.Next()):
			}
		}
	}))
	return time.Since(start), err
}

// comeBack is one attempt of Reconnect's.
func (p *Person) comeBack(ctx context.Context) error {
	if err := p.Connect(); err != nil {
		return err
	}
	if err := p.Resume(ctx); err != nil {
		return err
	}
	return p.HoldEvents(ctx)
}

// Storm drops every connection in ps, then reconnects everyone at once.
func Storm(ctx context.Context, ps []*Person) (time.Duration, error) {
	Each(ps, 256, func(p *Person) error { p.Disconnect(); return nil })
	return Reconnect(ctx, ps)
}

// Close ends everything the person holds.
func (p *Person) Close() {
	p.Disconnect()
	if p.stopP != nil {
		p.stopP()
	}
	if p.Host != nil {
		p.Host.Close()
	}
}

// Online brings fresh people all the way up: connect, sign up, log in,
// start the host (published keys, reservations), hold the Events stream.
// Sign-ups and log-ins go at par at once; the log-ins' wall time (the
// burst through the coordinators' hash queue) is returned.
func Online(ctx context.Context, ps []*Person, relays []peer.AddrInfo, par int) (logins time.Duration, err error) {
	if err := FirstError(Each(ps, par, func(p *Person) error {
		if err := p.Connect(); err != nil {
			return err
		}
		return p.SignUp(ctx)
	})); err != nil {
		return 0, err
	}
	start := time.Now()
	if err := FirstError(Each(ps, len(ps), func(p *Person) error { return p.LogIn(ctx) })); err != nil {
		return 0, err
	}
	logins = time.Since(start)
	if err := FirstError(Each(ps, par, func(p *Person) error {
		if p.crowd.Relays >= 0 {
			if err := p.StartHost(relays); err != nil {
				return err
			}
		}
		return p.HoldEvents(ctx)
	})); err != nil {
		return logins, err
	}
	return logins, nil
}

// WaitReserved waits until every person holds want reservations and has
// published its circuits, or ctx ends; it returns how many did not.
func WaitReserved(ctx context.Context, ps []*Person, want int) (missing int) {
	for {
		missing = 0
		for _, p := range ps {
			if p.Reserved() < want {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return missing
		case <-time.After(200 * time.Millisecond):
		}
	}
	errs := Each(ps, 64, func(p *Person) error { return p.Publish(ctx) })
	for _, err := range errs {
		if err != nil {
			missing++
		}
	}
	return missing
}

// Reachable pings each person through its published relay circuits,
// from prober (another person: the relays carry circuits between
// directory devices only), par at a time; it returns the people it could
// not reach and the first error.
func Reachable(ctx context.Context, prober *Person, ps []*Person, par int) (unreached []*Person, first error) {
	var mu sync.Mutex
	Each(ps, par, func(p *Person) error {
		err := pingThroughRelay(ctx, prober.Host, p.Host.ID(), p.Circuits())
		if err != nil {
			mu.Lock()
			unreached = append(unreached, p)
			if first == nil {
				first = fmt.Errorf("reach %s: %w", p.Login, err)
			}
			mu.Unlock()
		}
		return err
	})
	return unreached, first
}

// ReachableCircuits is Reachable for people held elsewhere (another
// process), known by peer id and circuits; it returns how many it could
// not reach and the first error.
func ReachableCircuits(ctx context.Context, prober *Person, circuits map[string][]string, par int) (unreached int, first error) {
	type target struct {
		id       peer.ID
		circuits []string
	}
	var ts []target
	for id, cs := range circuits {
		pid, err := peer.Decode(id)
		if err != nil {
			return len(circuits), err
		}
		ts = append(ts, target{pid, cs})
	}
	errs := Each(ts, par, func(t target) error { return pingThroughRelay(ctx, prober.Host, t.id, t.circuits) })
	for _, err := range errs {
		if err != nil {
			unreached++
			if first == nil {
				first = err
			}
		}
	}
	return unreached, first
}

func pingThroughRelay(ctx context.Context, prober host.Host, id peer.ID, circuits []string) error {
	var addrs []ma.Multiaddr
	for _, c := range circuits {
		m, err := ma.NewMultiaddr(c)
		if err != nil {
			return err
		}
		addrs = append(addrs, m)
	}
	if len(addrs) == 0 {
		return errors.New("no circuit")
	}
	cctx, cancel := context.WithTimeout(network.WithAllowLimitedConn(ctx, "probe"), 20*time.Second)
	defer cancel()
	defer prober.Network().ClosePeer(id)
	if err := prober.Connect(cctx, peer.AddrInfo{ID: id, Addrs: addrs}); err != nil {
		return err
	}
	select {
	case r := <-ping.Ping(cctx, prober, id):
		return r.Error
	case <-cctx.Done():
		return cctx.Err()
	}
}

// RelayInfos are the cluster's relays as the balancer names them.
func RelayInfos(ctx context.Context, c api.CoordinatorClient) ([]peer.AddrInfo, error) {
	resp, err := c.Relays(ctx, &api.RelaysRequest{})
	if err != nil {
		return nil, fmt.Errorf("relays: %w", err)
	}
	var out []peer.AddrInfo
	for _, r := range resp.Relays {
		infos, err := p2p.ParseAddrInfo(r.Addrs)
		if err != nil {
			return nil, fmt.Errorf("relay %s: %w", r.CoordinatorId, err)
		}
		out = append(out, infos...)
	}
	return out, nil
}

// RelayShare counts the people holding a reservation on each relay, by
// the relay peer ids in their circuits (a relay with several addresses
// counts once per person).
func RelayShare(ps []*Person) map[string]int {
	n := map[string]int{}
	for _, p := range ps {
		seen := map[string]bool{}
		for _, c := range p.Circuits() {
			if id := p2p.RelayOf(c); id != "" && !seen[id] {
				seen[id] = true
				n[id]++
			}
		}
	}
	return n
}
