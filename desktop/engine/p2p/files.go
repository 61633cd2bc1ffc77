package p2p

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/desktop/engine/wire"
)

// FileProtocolID is the file protocol: the recipient of a file opens a
// stream to its sender and fetches the sealed chunks it does not have yet.
// The chunks are sealed end to end under the file key (which only the
// recipients got, in the offer); the stream adds flow control: the sender
// never has more than the recipient's credit in flight, and the recipient
// grants credit for a chunk only once it has checked and stored it. So a
// recipient is never flooded, and whatever was in flight when a connection
// died (at most one window) is all that is ever sent twice.
const FileProtocolID = protocol.ID("/e2em/file/1.0.0")

// FileWindow is the credit a recipient grants before its first chunk is
// stored: one and a half sealed chunks, so the next chunk is half on its
// way while one is decrypted, and a connection that dies costs less than
// two chunks again.
const FileWindow = (wire.MaxFileFrame * 3) / 2

// maxFileCredit bounds the credit a sender believes; a recipient cannot
// make it hold more in memory by granting more.
const maxFileCredit = 64 << 20

// fileIdle is how long either side of a file stream waits for the other
// before giving up on the stream (the recipient then fetches again).
const fileIdle = 60 * time.Second

// FileRequest is a fetch that arrived: what it asks and who asks.
type FileRequest struct {
	Get     *wire.FileGet
	Peer    peer.ID
	Relayed bool
}

// ChunkFeed is what a sender serves on one stream.
type ChunkFeed interface {
	// Next returns the next chunk to send, in order, or io.EOF when every
	// chunk the recipient lacks has been returned.
	Next(ctx context.Context) (index uint64, sealed []byte, err error)
	// Sent reports bytes written to the stream (resends included).
	Sent(n int)
	// Stored reports that the recipient checked and stored chunk index.
	Stored(index uint64)
	// Close ends the feed (the stream ended).
	Close()
}

// FileServer decides what a fetch gets: a feed, or an error whose text the
// recipient reads as the refusal's reason.
type FileServer func(ctx context.Context, req FileRequest) (ChunkFeed, error)

// ServeFiles answers file fetches on h with serve until ctx ends.
func ServeFiles(ctx context.Context, h host.Host, serve FileServer, log *slog.Logger) {
	h.SetStreamHandler(FileProtocolID, func(st network.Stream) {
		serveFileStream(ctx, st, serve, log)
	})
	go func() {
		<-ctx.Done()
		h.RemoveStreamHandler(FileProtocolID)
	}()
}

// RefusedError is a sender refusing a fetch, with its reason.
type RefusedError struct {
	Reason    string
	Cancelled bool // the transfer was cancelled
}

// ErrCancelled, wrapped in what a FileServer or ChunkFeed returns, tells
// the recipient that the transfer was cancelled rather than failed.
var ErrCancelled = errors.New("cancelled")

func refusal(err error) *wire.FileFrame {
	return &wire.FileFrame{Kind: &wire.FileFrame_Refuse{Refuse: &wire.FileRefuse{Reason: err.Error(), Cancelled: errors.Is(err, ErrCancelled)}}}
}

func (e *RefusedError) Error() string { return "the sender refused: " + e.Reason }

func serveFileStream(ctx context.Context, st network.Stream, serve FileServer, log *slog.Logger) {
	defer st.Close()
	st.SetDeadline(time.Now().Add(handshakeTimeout))
	br := bufio.NewReader(st)
	f, err := wire.ReadFileFrame(br)
	if err != nil || f.GetGet() == nil {
		st.Reset()
		return
	}
	get := f.GetGet()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	feed, err := serve(ctx, FileRequest{Get: get, Peer: st.Conn().RemotePeer(), Relayed: isCircuit(st.Conn().RemoteMultiaddr().String())})
	if err != nil {
		wire.WriteFileFrame(st, refusal(err))
		st.CloseWrite()
		return
	}
	defer feed.Close()
	st.SetDeadline(time.Time{})
	cr := newCredit(min(get.Window, maxFileCredit))
	// Credits come back while chunks go out.
	outstanding := map[uint64]bool{}
	var mu sync.Mutex
	allSent := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		defer cr.close()
		for {
			st.SetReadDeadline(time.Now().Add(fileIdle))
			f, err := wire.ReadFileFrame(br)
			if err != nil {
				cancel()
				return
			}
			c := f.GetCredit()
			if c == nil {
				continue
			}
			cr.add(c.Bytes)
			mu.Lock()
			known := outstanding[c.Index]
			delete(outstanding, c.Index)
			left := len(outstanding)
			mu.Unlock()
			if known {
				feed.Stored(c.Index)
			}
			select {
			case <-allSent:
				if left == 0 {
					return
				}
			default:
			}
		}
	}()
	for {
		idx, sealed, err := feed.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("file stream: cannot serve a chunk", "err", err)
				wire.WriteFileFrame(st, refusal(err))
			}
			st.CloseWrite()
			return
		}
		mu.Lock()
		outstanding[idx] = true
		mu.Unlock()
		// The frame's header, then the sealed chunk as it is: no copy of
		// half a megabyte per chunk to put a few bytes before it.
		for _, part := range [][]byte{dataFrameHeader(idx, len(sealed)), sealed} {
			for len(part) > 0 {
				n, err := cr.take(ctx, len(part))
				if err != nil {
					st.Reset()
					return
				}
				st.SetWriteDeadline(time.Now().Add(fileIdle))
				if _, err := st.Write(part[:n]); err != nil {
					st.Reset()
					return
				}
				feed.Sent(n)
				part = part[n:]
			}
		}
	}
	mu.Lock()
	close(allSent)
	left := len(outstanding)
	mu.Unlock()
	st.CloseWrite()
	if left == 0 {
		return
	}
	// Wait for the last credits: they say the recipient stored the end.
	select {
	case <-finished:
	case <-ctx.Done():
	}
}

// dataFrameHeader is what WriteFileFrame writes before the sealed bytes
// of FileFrame{Data: FileData{Index: index, Sealed: <n bytes>}}: the
// frame's length, the data field's tag and length, the index (omitted when
// zero, as proto3 does) and the sealed field's tag and length.
func dataFrameHeader(index uint64, n int) []byte {
	var inner []byte
	if index != 0 {
		inner = protowire.AppendTag(inner, 1, protowire.VarintType)
		inner = protowire.AppendVarint(inner, index)
	}
	inner = protowire.AppendTag(inner, 2, protowire.BytesType)
	inner = protowire.AppendVarint(inner, uint64(n))
	outer := protowire.AppendTag(nil, 3, protowire.BytesType)
	outer = protowire.AppendVarint(outer, uint64(len(inner)+n))
	frame := protowire.AppendVarint(nil, uint64(len(outer)+len(inner)+n))
	return append(append(frame, outer...), inner...)
}

// frameLen is how many bytes f took on the stream.
func frameLen(f *wire.FileFrame) uint64 {
	n := proto.Size(f)
	return uint64(protowire.SizeVarint(uint64(n)) + n)
}

// credit is the sender's side of the flow control: bytes it may still
// send.
type credit struct {
	mu     sync.Mutex
	avail  uint64
	more   chan struct{}
	closed bool
}

func newCredit(initial uint64) *credit {
	return &credit{avail: initial, more: make(chan struct{}, 1)}
}

func (c *credit) add(n uint64) {
	c.mu.Lock()
	c.avail = min(c.avail+n, maxFileCredit)
	c.mu.Unlock()
	select {
	case c.more <- struct{}{}:
	default:
	}
}

func (c *credit) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	select {
	case c.more <- struct{}{}:
	default:
	}
}

// take waits for credit and takes up to want bytes of it.
func (c *credit) take(ctx context.Context, want int) (int, error) {
	for {
		c.mu.Lock()
		if c.avail > 0 {
			n := int(min(uint64(want), c.avail))
			c.avail -= uint64(n)
			c.mu.Unlock()
			return n, nil
		}
		closed := c.closed
		c.mu.Unlock()
		if closed {
			return 0, io.ErrClosedPipe
		}
		select {
		case <-c.more:
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(fileIdle):
			return 0, errors.New("the recipient granted no credit for a minute")
		}
	}
}

// ChunkSink is where a recipient puts the chunks it fetches.
type ChunkSink interface {
	// Store checks chunk index and stores it; it returns only once the
	// chunk is safely stored (credit is granted then). An error ends the
	// fetch (a chunk that failed its check is fetched again next time).
	// relayed says whether it came through a relay.
	Store(index uint64, sealed []byte, relayed bool) error
}

// FetchStats is what one fetch moved.
type FetchStats struct {
	Chunks  int
	Relayed bool
	Relay   string // the relay's peer id, when relayed
}

// ErrMovedDirect ends a relayed fetch when a direct connection to the
// sender opens: fetch again, and the rest comes the direct way.
var ErrMovedDirect = errors.New("a direct connection opened; the transfer moves to it")

// leaveRelayForDirect resets st, a relayed stream to p, when a direct
// connection to p opens (or is open already); moved reports whether it did.
func leaveRelayForDirect(h host.Host, p peer.ID, st network.Stream) (moved func() bool) {
	var done atomic.Bool
	move := func() {
		if done.CompareAndSwap(false, true) {
			st.Reset()
		}
	}
	nb := &network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		if c.RemotePeer() == p && !isCircuit(c.RemoteMultiaddr().String()) {
			move()
		}
	}}
	h.Network().Notify(nb)
	if DirectlyConnected(h, p) {
		move()
	}
	return func() bool {
		h.Network().StopNotify(nb)
		return done.Load()
	}
}

// ErrOverrun is a sender that sent more than its credit allowed.
var ErrOverrun = errors.New("the sender sent more than it was asked for")

// Fetch opens a file stream to t, asks for what get names, and stores what
// arrives in sink until the sender has sent everything (nil), refuses
// (*RefusedError), misbehaves, or the stream dies.
func Fetch(ctx context.Context, h host.Host, t Target, get *wire.FileGet, sink ChunkSink, log *slog.Logger) (stats FetchStats, err error) {
	h.Peerstore().AddAddrs(t.PeerID, t.Addrs, peerstore.TempAddrTTL)
	dctx, cancel := context.WithTimeout(network.WithAllowLimitedConn(ctx, "e2em files"), handshakeTimeout)
	st, err := h.NewStream(dctx, t.PeerID, FileProtocolID)
	cancel()
	if err != nil {
		return stats, fmt.Errorf("reach %s: %w", t.LoginID, err)
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	defer stop()
	stats.Relayed = isCircuit(st.Conn().RemoteMultiaddr().String())
	if stats.Relayed {
		stats.Relay = RelayOf(st.Conn().RemoteMultiaddr().String())
		// A direct connection usually follows the first session within
		// moments: the transfer leaves the relay for it at once (what is
		// stored stays; the next fetch asks for the rest).
		moved := leaveRelayForDirect(h, t.PeerID, st)
		defer func() {
			if moved() && err != nil {
				err = ErrMovedDirect
			}
		}()
	}
	log.Info("fetching a file", "from", t.LoginID, "transfer", get.TransferId, "relay", stats.Relay)
	if get.Window == 0 {
		get.Window = FileWindow
	}
	st.SetWriteDeadline(time.Now().Add(handshakeTimeout))
	if err := wire.WriteFileFrame(st, &wire.FileFrame{Kind: &wire.FileFrame_Get{Get: get}}); err != nil {
		st.Reset()
		return stats, fmt.Errorf("ask %s for the file: %w", t.LoginID, err)
	}
	// Frames are read as they arrive, while the chunk before is checked
	// and stored: the stream's own window keeps moving, and the next chunk
	// is whole when the one before is done (reading only between chunks
	// left the cores idle a fifth of the time, waiting for the second half
	// of each chunk to be let through). The buffer is larger than the
	// window, so that whatever a sender has pushed beyond its credit is
	// read ahead, counted and caught.
	counted := &countingReader{r: st}
	rctx, stopReading := context.WithCancel(ctx)
	defer stopReading()
	frames := readFrames(rctx, bufio.NewReaderSize(counted, 2*wire.MaxFileFrame), st)
	granted := get.Window
	for {
		var next frameOrError
		select {
		case next = <-frames:
		case <-ctx.Done():
			st.Reset()
			return stats, ctx.Err()
		}
		f, err := next.f, next.err
		if errors.Is(err, io.EOF) {
			return stats, nil
		}
		if err != nil {
			st.Reset()
			return stats, fmt.Errorf("file stream from %s: %w", t.LoginID, err)
		}
		// Everything that arrived, read ahead or not, counts against the
		// credit: a sender past it is flooding.
		if counted.n.Load() > granted {
			st.Reset()
			return stats, ErrOverrun
		}
		if r := f.GetRefuse(); r != nil {
			return stats, &RefusedError{Reason: r.Reason, Cancelled: r.Cancelled}
		}
		d := f.GetData()
		if d == nil {
			continue
		}
		if err := sink.Store(d.Index, d.Sealed, stats.Relayed); err != nil {
			st.Reset()
			return stats, err
		}
		stats.Chunks++
		n := frameLen(f)
		granted += n
		st.SetWriteDeadline(time.Now().Add(fileIdle))
		if err := wire.WriteFileFrame(st, &wire.FileFrame{Kind: &wire.FileFrame_Credit{Credit: &wire.FileCredit{Index: d.Index, Bytes: n}}}); err != nil {
			st.Reset()
			return stats, fmt.Errorf("file stream from %s: %w", t.LoginID, err)
		}
	}
}

type countingReader struct {
	r io.Reader
	n atomic.Uint64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(uint64(n))
	return n, err
}

type frameOrError struct {
	f   *wire.FileFrame
	err error
}

// readFrames reads frames from br in a goroutine, one ahead of the one
// being handled, until an error (which it passes on last) or ctx ends.
func readFrames(ctx context.Context, br *bufio.Reader, st network.Stream) <-chan frameOrError {
	out := make(chan frameOrError, 1)
	go func() {
		for {
			st.SetReadDeadline(time.Now().Add(fileIdle))
			f, err := wire.ReadFileFrame(br)
			select {
			case out <- frameOrError{f, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return out
}
