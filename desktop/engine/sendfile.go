package engine

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/e2e"
	"github.com/e2em/e2em/desktop/engine/p2p"
	"github.com/e2em/e2em/desktop/engine/store"
	"github.com/e2em/e2em/desktop/engine/wire"
)

// outXfer is a file this profile sends. mu guards rec and the rest.
type outXfer struct {
	mu       sync.Mutex
	rec      *store.OutTransfer
	src      *chunkSource // made on first use
	meter    meter
	lastEmit time.Time
	lastSave time.Time
	pushing  map[string]bool  // recipients whose mailbox puts run
	serving  map[string]*feed // each recipient's one fetch being served
}

func (x *outXfer) snapshot() Transfer {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.view()
}

// view is snapshot with x.mu held.
func (x *outXfer) view() Transfer {
	r := x.rec
	t := Transfer{ID: r.ID, Outgoing: true, Groups: r.Groups, Name: r.Name, Path: r.Path, Size: r.Size,
		State: r.State, Error: r.Error, Started: r.Created, Rate: x.meter.rate}
	if len(r.Groups) == 0 && len(r.Recipients) == 1 {
		t.Peer = r.Recipients[0].Login
	}
	vias := map[string]bool{}
	for _, rc := range r.Recipients {
		t.Total += r.Size
		t.Done += rc.Stored
		if rc.Via != "" && !vias[rc.Via] {
			vias[rc.Via] = true
			t.Via = strings.TrimPrefix(t.Via+","+rc.Via, ",")
		}
		t.Recipients = append(t.Recipients, TransferRecipient{Login: rc.Login, State: rc.State, Via: rc.Via,
			Stored: rc.Stored, Sent: rc.Sent, Error: rc.Error})
	}
	if store.XferFinished(t.State) {
		t.Rate = 0
	}
	return t
}

func (x *outXfer) recipient(login string) *store.OutRecipient {
	for _, r := range x.rec.Recipients {
		if r.Login == login {
			return r
		}
	}
	return nil
}

// Config defaults for files.
const (
	// DefaultMailboxFileMax is the largest file that goes through the
	// mailbox to an offline recipient (the cluster keeps 64 MiB per
	// recipient by default; half of it leaves room for messages).
	DefaultMailboxFileMax = 32 << 20
)

// fileRecipient is one person a file goes to, and the group it goes to
// them as.
type fileRecipient struct{ login, group string }

// SendFile sends the file at path to one person. It returns the
// transfer's id as soon as the transfer is safely in the profile; the file
// is hashed and offered in the background, and its progress comes as
// events.
func (e *Engine) SendFile(ctx context.Context, path, to string) (string, error) {
	s, err := e.current()
	if err != nil {
		return "", err
	}
	abs, fi, err := checkSendable(path, "Send_file <file> <login id>")
	if err != nil {
		return "", err
	}
	login, err := e.resolveOther(ctx, s, to)
	if err != nil {
		return "", err
	}
	return e.offerFile(s, abs, fi, []fileRecipient{{login: login}}, nil)
}

// SendGroupFile sends the file at path to every member of every named
// group, once each however many of the groups they are in. The file is
// encrypted once; every member fetches the same sealed chunks.
func (e *Engine) SendGroupFile(ctx context.Context, path string, groups ...string) (string, error) {
	s, err := e.current()
	if err != nil {
		return "", err
	}
	abs, fi, err := checkSendable(path, "Send_group_File <file> <n> <group1> ... <groupN>")
	if err != nil {
		return "", err
	}
	order, label, names, err := e.groupRecipients(ctx, s, groups)
	if err != nil {
		return "", err
	}
	rs := make([]fileRecipient, len(order))
	for i, m := range order {
		rs[i] = fileRecipient{login: m, group: label[m]}
	}
	return e.offerFile(s, abs, fi, rs, names)
}

// checkSendable says in words what is wrong with a path before anything
// is sent, or returns its absolute path and what it is.
func checkSendable(path, usage string) (string, fs.FileInfo, error) {
	if path == "" {
		return "", nil, fmt.Errorf("name the file to send; usage: %s", usage)
	}
	if rest, ok := strings.CutPrefix(path, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			path = filepath.Join(home, rest)
		}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", nil, err
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", nil, fmt.Errorf("there is no file %q (the file comes first; usage: %s)", path, usage)
	case errors.Is(err, fs.ErrPermission):
		return "", nil, fmt.Errorf("cannot read %q: permission denied", path)
	case err != nil:
		return "", nil, fmt.Errorf("cannot read %q: %w", path, err)
	case fi.IsDir():
		return "", nil, fmt.Errorf("%q is a folder; send a file (zip the folder first)", path)
	case !fi.Mode().IsRegular():
		return "", nil, fmt.Errorf("%q is not a regular file", path)
	case wire.ChunkCount(uint64(fi.Size()), wire.ChunkSize) > wire.MaxChunks:
		return "", nil, fmt.Errorf("%q is too large to send (%s at most)", path, sizeText("", int64(wire.MaxChunks)*wire.ChunkSize))
	}
	f, err := os.Open(abs)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return "", nil, fmt.Errorf("cannot read %q: permission denied", path)
		}
		return "", nil, fmt.Errorf("cannot read %q: %w", path, err)
	}
	f.Close()
	return abs, fi, nil
}

// offerFile records a new outgoing transfer and starts preparing it.
func (e *Engine) offerFile(s *online, abs string, fi fs.FileInfo, rs []fileRecipient, groups []string) (string, error) {
	key, err := e2e.NewFileKey(rand.Reader)
	if err != nil {
		return "", err
	}
	rec := &store.OutTransfer{ID: wire.NewID(), Path: abs, Name: filepath.Base(abs), Size: fi.Size(),
		ModTime: fi.ModTime().UnixNano(), ChunkSize: wire.ChunkSize, FileKey: key, Groups: groups,
		Created: time.Now(), State: store.XferPreparing}
	for _, r := range rs {
		token := make([]byte, 16)
		if _, err := rand.Read(token); err != nil {
			return "", err
		}
		rec.Recipients = append(rec.Recipients, &store.OutRecipient{Login: r.login, Group: r.group, Token: token, State: store.XferPreparing})
	}
	if err := e.store.PutOutTransfer(rec); err != nil {
		return "", fmt.Errorf("save the transfer: %w", err)
	}
	x := &outXfer{rec: rec}
	e.xfers.mu.Lock()
	e.xfers.out[rec.ID] = x
	e.xfers.mu.Unlock()
	e.spawn(s, func(s *online) { e.prepare(s, x) })
	return rec.ID, nil
}

// sourceChanged says why a file being sent can no longer be, or "".
func sourceChanged(r *store.OutTransfer) string {
	fi, err := os.Stat(r.Path)
	if err != nil {
		return fmt.Sprintf("%s can no longer be read (%v); send it again", r.Name, err)
	}
	if fi.Size() != r.Size || fi.ModTime().UnixNano() != r.ModTime {
		return fmt.Sprintf("%s changed since it was sent; send it again", r.Name)
	}
	return ""
}

// prepare hashes the file and queues its offers: one history line per
// group label (one for a person), one offer per recipient.
func (e *Engine) prepare(s *online, x *outXfer) {
	x.mu.Lock()
	rec := *x.rec
	x.mu.Unlock()
	sum, err := hashFile(s.ctx, rec.Path)
	if s.ctx.Err() != nil {
		return // prepared again at the next log-in
	}
	if err == nil {
		if why := sourceChanged(&rec); why != "" {
			err = errors.New(why)
		}
	}
	if err != nil {
		e.failOutgoing(x, fmt.Sprintf("cannot read %s: %v", rec.Name, err))
		return
	}
	x.mu.Lock()
	if x.rec.State != store.XferPreparing {
		x.mu.Unlock()
		return // cancelled meanwhile
	}
	x.rec.SHA256 = sum
	x.rec.State = store.XferOffered
	now := time.Now()
	byLabel := map[string][]*store.OutRecipient{}
	var labels []string
	for _, r := range x.rec.Recipients {
		r.State = store.XferOffered
		if _, ok := byLabel[r.Group]; !ok {
			labels = append(labels, r.Group)
		}
		byLabel[r.Group] = append(byLabel[r.Group], r)
	}
	var msgs []*store.Message
	var outs [][]*store.Outgoing
	for _, label := range labels {
		id := wire.NewID()
		m := &store.Message{ID: id, Group: label, From: s.login, Body: sizeText(rec.Name, rec.Size), Sent: now,
			Outgoing: true, State: store.StateQueued,
			File: &store.FileRef{Transfer: rec.ID, Name: rec.Name, Size: rec.Size, Path: rec.Path}}
		var batch []*store.Outgoing
		for _, r := range byLabel[label] {
			if label == "" {
				m.Peer = r.Login
			}
			offer := &wire.FileOffer{TransferId: rec.ID, Name: rec.Name, Size: uint64(rec.Size), ChunkSize: rec.ChunkSize,
				Sha256: sum, FileKey: rec.FileKey, Token: r.Token, Group: label}
			payload, err := proto.Marshal(&wire.Payload{Id: id, SentUnixNano: now.UnixNano(), From: s.login,
				Kind: &wire.Payload_FileOffer{FileOffer: offer}})
			if err != nil {
				x.mu.Unlock()
				e.failOutgoing(x, err.Error())
				return
			}
			batch = append(batch, &store.Outgoing{ID: id, To: r.Login, Group: label, Body: m.Body, SentAt: now.UnixNano(),
				Payload: payload, Kind: store.KindFileOffer, Transfer: rec.ID})
		}
		msgs = append(msgs, m)
		outs = append(outs, batch)
	}
	err = e.store.QueueFileOffers(x.rec, msgs, outs)
	snap := x.view()
	x.mu.Unlock()
	if err != nil {
		e.log.Error("queue a file's offers", "err", err)
		e.failOutgoing(x, fmt.Sprintf("cannot save the offers: %v", err))
		return
	}
	e.fileEvent(EventFileOffered, snap, "")
	kick := false
	for _, batch := range outs {
		for _, o := range batch {
			if !e.sendNow(s, o) {
				kick = true
			}
		}
	}
	if kick {
		e.kickQueue(s)
	}
}

// hashFile is the SHA-256 of a file, read in large blocks.
func hashFile(ctx context.Context, path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			return h.Sum(nil), nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// failOutgoing ends a transfer that cannot go on, telling every recipient
// still in it.
func (e *Engine) failOutgoing(x *outXfer, why string) {
	e.endOutgoing(x, store.XferFailed, why)
}

func (e *Engine) cancelOutgoing(s *online, x *outXfer, why string) {
	e.endOutgoing(x, store.XferCancelled, why)
}

// endOutgoing ends every unfinished part of x with state and reason, and
// sends the recipients a FileCancel.
func (e *Engine) endOutgoing(x *outXfer, state, why string) {
	x.mu.Lock()
	if store.XferFinished(x.rec.State) {
		x.mu.Unlock()
		return
	}
	var tell []string
	for _, r := range x.rec.Recipients {
		if !store.XferFinished(r.State) {
			if r.State != store.XferPreparing {
				tell = append(tell, r.Login)
			}
			r.State, r.Error = state, why
		}
	}
	x.rec.State, x.rec.Error = state, why
	e.saveOut(x)
	src := x.src
	x.src = nil
	snap := x.view()
	x.mu.Unlock()
	if src != nil {
		src.Close()
	}
	if s, err := e.current(); err == nil {
		for _, login := range tell {
			e.queueControl(s, login, snap.ID, &wire.Payload{Kind: &wire.Payload_FileCancel{FileCancel: &wire.FileCancel{TransferId: snap.ID, Reason: why}}})
		}
	}
	kind := EventFileFailed
	if state == store.XferCancelled {
		kind = EventFileCancelled
	}
	e.fileEvent(kind, snap, why)
}

// saveOut writes x to the profile; x.mu is held.
func (e *Engine) saveOut(x *outXfer) {
	x.lastSave = time.Now()
	if err := e.store.PutOutTransfer(x.rec); err != nil {
		e.log.Error("save a transfer", "id", x.rec.ID, "err", err)
	}
}

// queueControl queues a file's control message (a result or a
// cancellation) for to: delivered like a message, shown nowhere.
func (e *Engine) queueControl(s *online, to, transfer string, p *wire.Payload) {
	p.Id, p.SentUnixNano, p.From = wire.NewID(), time.Now().UnixNano(), s.login
	payload, err := proto.Marshal(p)
	if err != nil {
		return
	}
	o := &store.Outgoing{ID: p.Id, To: to, SentAt: p.SentUnixNano, Payload: payload, Kind: store.KindControl, Transfer: transfer}
	if err := e.store.AddOutgoing(nil, o); err != nil {
		e.log.Error("queue a file's control message", "to", to, "err", err)
		return
	}
	if !e.sendNow(s, o) {
		e.kickQueue(s)
	}
}

// offerLeft hears how a file's offer left for a recipient: on a session
// the recipient fetches the chunks itself; into the mailbox, the chunks
// follow it there when the file is small enough, or wait.
func (e *Engine) offerLeft(s *online, id, to, via string) {
	x := e.xfers.outgoing(id)
	if x == nil {
		return
	}
	x.mu.Lock()
	r := x.recipient(to)
	if r == nil || store.XferFinished(r.State) || r.State == store.XferActive {
		x.mu.Unlock()
		return
	}
	r.Via = via
	if via != ViaMailbox {
		x.mu.Unlock()
		return
	}
	name, size := x.rec.Name, x.rec.Size
	if size > e.cfg.MailboxFileMax {
		r.State = store.XferWaiting
		r.Error = fmt.Sprintf("%s is offline, and %s is too large for the mailbox; it goes when you are both online", to, sizeText(name, size))
		e.saveOut(x)
		snap := x.view()
		x.mu.Unlock()
		e.fileEvent(EventFileWaiting, snap, r.Error)
		return
	}
	r.State = store.XferActive
	e.saveOut(x)
	x.mu.Unlock()
	e.startMailPush(s, x, to)
}

// startMailPush puts the chunks of x into to's mailbox, unless that runs
// already.
func (e *Engine) startMailPush(s *online, x *outXfer, to string) {
	x.mu.Lock()
	if x.pushing == nil {
		x.pushing = map[string]bool{}
	}
	if x.pushing[to] {
		x.mu.Unlock()
		return
	}
	x.pushing[to] = true
	x.mu.Unlock()
	e.spawn(s, func(s *online) {
		defer func() {
			x.mu.Lock()
			delete(x.pushing, to)
			x.mu.Unlock()
		}()
		e.pushMail(s, x, to)
	})
}

// pushMail puts the chunks not put yet, in order, each in an envelope
// sealed for to. It stops when the recipient fetches for itself (it came
// online), when the mailbox is full (the rest waits), or at the end.
func (e *Engine) pushMail(s *online, x *outXfer, to string) {
	backoff := api.Backoff{Min: time.Second, Max: 30 * time.Second}
	for s.ctx.Err() == nil {
		x.mu.Lock()
		r := x.recipient(to)
		if r == nil || r.State != store.XferActive || r.Via != ViaMailbox {
			x.mu.Unlock()
			return
		}
		i, n := r.Mailed, chunkCount(x.rec.Size, x.rec.ChunkSize)
		name, size, id := x.rec.Name, x.rec.Size, x.rec.ID
		x.mu.Unlock()
		if i >= n {
			e.fileEvent(EventFileWaiting, x.snapshot(), fmt.Sprintf("%s waits in %s's mailbox; it arrives when they log in", sizeText(name, size), to))
			return
		}
		src, err := e.source(x)
		var sealed []byte
		if err == nil {
			sealed, err = src.Sealed(i)
		}
		if err != nil {
			e.failOutgoing(x, err.Error())
			return
		}
		err = e.putChunkMail(s, to, id, i, sealed)
		if status.Code(err) == codes.ResourceExhausted {
			x.mu.Lock()
			r.State = store.XferWaiting
			r.Error = fmt.Sprintf("%s's mailbox is full; the rest of %s goes when you are both online", to, name)
			e.saveOut(x)
			snap := x.view()
			x.mu.Unlock()
			e.fileEvent(EventFileWaiting, snap, r.Error)
			return
		}
		if err != nil {
			e.log.Warn("put a file chunk in the mailbox; will retry", "to", to, "err", err)
			select {
			case <-s.ctx.Done():
			case <-time.After(backoff.Next()):
			}
			continue
		}
		backoff.Reset()
		x.mu.Lock()
		if r.Mailed == i {
			r.Mailed = i + 1
			r.Stored += chunkLen(size, x.rec.ChunkSize, i)
		}
		e.progressOut(x, chunkLen(size, x.rec.ChunkSize, i))
		e.saveOut(x)
		x.mu.Unlock()
	}
}

// putChunkMail seals chunk i of a transfer in an envelope for to and puts
// it in the mailbox; the error keeps its gRPC status.
func (e *Engine) putChunkMail(s *online, to, id string, i uint64, sealed []byte) error {
	t, err := e.target(s.ctx, s, to, false)
	if err != nil {
		return err
	}
	payload, err := proto.Marshal(&wire.Payload{Id: wire.NewID(), SentUnixNano: time.Now().UnixNano(), From: s.login,
		Kind: &wire.Payload_FileChunk{FileChunk: &wire.FileChunk{TransferId: id, Index: i, Sealed: sealed}}})
	if err != nil {
		return err
	}
	env, err := e.sealEnvelope(s, t, payload)
	if err != nil {
		return err
	}
	ctx, cancel := e.callCtx(s.ctx, s)
	defer cancel()
	_, err = e.coord.PutMail(ctx, &api.PutMailRequest{To: t.LoginID, Envelope: env})
	return err
}

// progressOut counts n bytes more for x and reports progress at most ten
// times a second; x.mu is held.
func (e *Engine) progressOut(x *outXfer, n int64) {
	now := time.Now()
	x.meter.add(n, now)
	if now.Sub(x.lastEmit) < progressEvery {
		return
	}
	x.lastEmit = now
	snap := x.view()
	e.fileEvent(EventFileProgress, snap, "")
}

// source is the chunk source of x, made on first use.
func (e *Engine) source(x *outXfer) (*chunkSource, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.src != nil {
		return x.src, nil
	}
	if store.XferFinished(x.rec.State) {
		return nil, fmt.Errorf("%s is %s", x.rec.Name, x.rec.State)
	}
	if why := sourceChanged(x.rec); why != "" {
		return nil, errors.New(why)
	}
	spool := ""
	if len(x.rec.Recipients) > 1 {
		spool = filepath.Join(e.store.Dir(), "spool", x.rec.ID+".sealed")
	}
	src, err := openChunkSource(x.rec, spool)
	if err != nil {
		return nil, err
	}
	x.src = src
	return src, nil
}

// serveFile answers a recipient's fetch: the transfer must exist and the
// token be a recipient's, and the libp2p peer asking must be the device
// the directory lists for that recipient.
func (e *Engine) serveFile(s *online) p2p.FileServer {
	return func(ctx context.Context, req p2p.FileRequest) (p2p.ChunkFeed, error) {
		get := req.Get
		x := e.xfers.outgoing(get.TransferId)
		if x == nil {
			return nil, errors.New("no such transfer")
		}
		x.mu.Lock()
		var r *store.OutRecipient
		for _, rc := range x.rec.Recipients {
			if subtle.ConstantTimeCompare(rc.Token, get.Token) == 1 {
				r = rc
			}
		}
		if r == nil {
			x.mu.Unlock()
			return nil, errors.New("you are not a recipient of this transfer")
		}
		login, state, why := r.Login, r.State, r.Error
		n := chunkCount(x.rec.Size, x.rec.ChunkSize)
		x.mu.Unlock()
		if _, err := e.verifyPeer(ctx, login, req.Peer); err != nil {
			return nil, fmt.Errorf("not the device of %s: %v", login, err)
		}
		switch state {
		case store.XferCancelled:
			return nil, fmt.Errorf("%w: %s", p2p.ErrCancelled, why)
		case store.XferFailed:
			return nil, errors.New(why)
		}
		src, err := e.source(x)
		if err != nil {
			e.failOutgoing(x, err.Error())
			return nil, err
		}
		via := ViaDirect
		if req.Relayed {
			via = ViaRelay
		}
		x.mu.Lock()
		if r.State != store.XferDone {
			r.State, r.Via, r.Error = store.XferActive, via, ""
		}
		// What the recipient has is what it says (it may have lost a
		// partial file); mailbox chunks not yet fetched count no more.
		stored := int64(0)
		for i := uint64(0); i < n; i++ {
			if hasChunk(get.Have, i) {
				stored += chunkLen(x.rec.Size, x.rec.ChunkSize, i)
			}
		}
		r.Stored = stored
		e.saveOut(x)
		// One fetch per recipient at a time: a new one means the old
		// connection died (or the recipient misbehaves); the old feed goes.
		if x.serving == nil {
			x.serving = map[string]*feed{}
		}
		if old := x.serving[login]; old != nil {
			old.cancel()
		}
		f := newFeed(ctx, e, x, r, src, get.Have, n)
		x.serving[login] = f
		x.mu.Unlock()
		return f, nil
	}
}

// feed serves one fetch: the chunks the recipient lacks, in order, sealed
// ahead on every core.
type feed struct {
	e       *Engine
	x       *outXfer
	r       *store.OutRecipient
	results chan chan sealedChunk
	ctx     context.Context
	cancel  context.CancelFunc
}

type sealedChunk struct {
	index  uint64
	sealed []byte
	err    error
}

func newFeed(ctx context.Context, e *Engine, x *outXfer, r *store.OutRecipient, src *chunkSource, have []byte, n uint64) *feed {
	ctx, cancel := context.WithCancel(ctx)
	workers := runtime.GOMAXPROCS(0)
	f := &feed{e: e, x: x, r: r, results: make(chan chan sealedChunk, 2*workers), ctx: ctx, cancel: cancel}
	jobs := make(chan struct {
		i   uint64
		out chan sealedChunk
	})
	for w := 0; w < workers; w++ {
		go func() {
			for j := range jobs {
				sealed, err := src.Sealed(j.i)
				j.out <- sealedChunk{index: j.i, sealed: sealed, err: err}
			}
		}()
	}
	go func() {
		defer close(jobs)
		defer close(f.results)
		for i := uint64(0); i < n; i++ {
			if hasChunk(have, i) {
				continue
			}
			out := make(chan sealedChunk, 1)
			select {
			case f.results <- out: // in order, at most 2×workers ahead
			case <-ctx.Done():
				return
			}
			select {
			case jobs <- struct {
				i   uint64
				out chan sealedChunk
			}{i, out}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return f
}

func (f *feed) Next(ctx context.Context) (uint64, []byte, error) {
	var out chan sealedChunk
	var ok bool
	select {
	case out, ok = <-f.results:
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	}
	if !ok {
		if f.ctx.Err() != nil {
			return 0, nil, errors.New("a newer fetch of this file took over")
		}
		return 0, nil, io.EOF
	}
	select {
	case c := <-out:
		if c.err == nil {
			f.x.mu.Lock()
			state := f.r.State
			f.x.mu.Unlock()
			switch state {
			case store.XferCancelled:
				return 0, nil, fmt.Errorf("the transfer was %w", p2p.ErrCancelled)
			case store.XferFailed:
				return 0, nil, errors.New("the transfer failed")
			}
		}
		return c.index, c.sealed, c.err
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	}
}

func (f *feed) Sent(n int) {
	f.x.mu.Lock()
	f.r.Sent += int64(n)
	f.x.mu.Unlock()
}

func (f *feed) Stored(i uint64) {
	f.x.mu.Lock()
	defer f.x.mu.Unlock()
	n := chunkLen(f.x.rec.Size, f.x.rec.ChunkSize, i)
	f.r.Stored = min(f.r.Stored+n, f.x.rec.Size)
	f.e.progressOut(f.x, n)
	if time.Since(f.x.lastSave) > time.Second {
		f.e.saveOut(f.x)
	}
}

func (f *feed) Close() {
	f.cancel()
	f.x.mu.Lock()
	if f.x.serving[f.r.Login] == f {
		delete(f.x.serving, f.r.Login)
	}
	f.e.saveOut(f.x)
	f.x.mu.Unlock()
}

// fileResult hears a recipient's word on a transfer.
func (e *Engine) fileResult(s *online, from string, res *wire.FileResult) {
	x := e.xfers.outgoing(res.TransferId)
	if x == nil {
		e.log.Info("a file result for a transfer this profile did not send", "from", from, "ok", res.Ok, "reason", bounded(res.Reason, 300))
		return
	}
	x.mu.Lock()
	r := x.recipient(from)
	if r == nil || store.XferFinished(r.State) {
		x.mu.Unlock()
		return
	}
	var kind EventKind
	text := ""
	if res.Ok {
		r.State, r.Stored, r.Error = store.XferDone, x.rec.Size, ""
	} else {
		r.State, r.Error = store.XferFailed, bounded(res.Reason, 300)
		kind, text = EventFileFailed, fmt.Sprintf("%s did not take %s: %s", from, x.rec.Name, r.Error)
	}
	e.finishIfAllEnded(x)
	e.saveOut(x)
	snap := x.view()
	x.mu.Unlock()
	if kind != "" && !snap.Finished() {
		e.fileEvent(kind, snap, text)
	}
	if snap.Finished() {
		e.announceEnd(x, snap)
	}
}

// fileCancelledBy hears a recipient cancel its part of a transfer.
func (e *Engine) fileCancelledBy(from string, c *wire.FileCancel) {
	x := e.xfers.outgoing(c.TransferId)
	if x == nil {
		return
	}
	x.mu.Lock()
	r := x.recipient(from)
	if r == nil || store.XferFinished(r.State) {
		x.mu.Unlock()
		return
	}
	r.State, r.Error = store.XferCancelled, from+" cancelled it"
	e.finishIfAllEnded(x)
	e.saveOut(x)
	snap := x.view()
	x.mu.Unlock()
	if snap.Finished() {
		e.announceEnd(x, snap)
	} else {
		e.fileEvent(EventFileProgress, snap, from+" cancelled it")
	}
}

// finishIfAllEnded ends x once every recipient's part has: done if
// anyone got it, else as the parts ended. x.mu is held.
func (e *Engine) finishIfAllEnded(x *outXfer) {
	done, cancelled := 0, 0
	var notes []string
	for _, r := range x.rec.Recipients {
		switch r.State {
		case store.XferDone:
			done++
		case store.XferCancelled:
			cancelled++
			notes = append(notes, r.Login+": "+r.Error)
		case store.XferFailed:
			notes = append(notes, r.Login+": "+r.Error)
		default:
			return
		}
	}
	switch {
	case done > 0:
		x.rec.State = store.XferDone
	case cancelled == len(x.rec.Recipients):
		x.rec.State = store.XferCancelled
	default:
		x.rec.State = store.XferFailed
	}
	x.rec.Error = strings.Join(notes, "; ")
}

// announceEnd reports a finished transfer and lets its spool go.
func (e *Engine) announceEnd(x *outXfer, snap Transfer) {
	x.mu.Lock()
	src := x.src
	x.src = nil
	x.mu.Unlock()
	if src != nil {
		src.Close()
	}
	switch snap.State {
	case store.XferDone:
		e.fileEvent(EventFileDone, snap, snap.Error)
	case store.XferCancelled:
		e.fileEvent(EventFileCancelled, snap, snap.Error)
	default:
		e.fileEvent(EventFileFailed, snap, snap.Error)
	}
}

func bounded(s string, n int) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// resumeOutgoing picks up the outgoing transfers after a log-in: files
// still to hash, mailbox puts that were under way.
func (e *Engine) resumeOutgoing(s *online) {
	outs, _ := e.xfers.all()
	for _, x := range outs {
		x.mu.Lock()
		state := x.rec.State
		var push []string
		for _, r := range x.rec.Recipients {
			if r.State == store.XferActive && r.Via == ViaMailbox {
				push = append(push, r.Login)
			}
		}
		x.mu.Unlock()
		if state == store.XferPreparing {
			e.spawn(s, func(s *online) { e.prepare(s, x) })
			continue
		}
		for _, to := range push {
			e.startMailPush(s, x, to)
		}
	}
}

// chunkSource reads a file being sent and seals its chunks. For a file to
// several recipients each chunk is sealed once into a spool file in the
// profile, and served to everyone from there.
type chunkSource struct {
	file      *os.File
	key       []byte
	size      int64
	chunkSize uint32

	spool    *os.File // nil: seal each time
	mu       sync.Mutex
	spooled  map[uint64]bool
	inflight map[uint64]chan struct{}
}

func openChunkSource(r *store.OutTransfer, spoolPath string) (*chunkSource, error) {
	f, err := os.Open(r.Path)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", r.Name, err)
	}
	src := &chunkSource{file: f, key: r.FileKey, size: r.Size, chunkSize: r.ChunkSize}
	if spoolPath != "" {
		if err := os.MkdirAll(filepath.Dir(spoolPath), 0o700); err != nil {
			f.Close()
			return nil, err
		}
		sp, err := os.OpenFile(spoolPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("spool for %s: %w", r.Name, err)
		}
		src.spool, src.spooled, src.inflight = sp, map[uint64]bool{}, map[uint64]chan struct{}{}
	}
	return src, nil
}

// Sealed returns chunk i sealed under the file key.
func (c *chunkSource) Sealed(i uint64) ([]byte, error) {
	if c.spool == nil {
		return c.seal(i)
	}
	sealedLen := e2e.SealedLen(int(chunkLen(c.size, c.chunkSize, i)))
	off := int64(i) * int64(e2e.SealedLen(int(c.chunkSize)))
	for {
		c.mu.Lock()
		if c.spooled[i] {
			c.mu.Unlock()
			buf := make([]byte, sealedLen)
			if _, err := c.spool.ReadAt(buf, off); err != nil {
				return nil, fmt.Errorf("read the spool: %w", err)
			}
			return buf, nil
		}
		if wait, ok := c.inflight[i]; ok {
			c.mu.Unlock()
			<-wait
			continue
		}
		done := make(chan struct{})
		c.inflight[i] = done
		c.mu.Unlock()
		sealed, err := c.seal(i)
		if err == nil {
			_, err = c.spool.WriteAt(sealed, off)
		}
		c.mu.Lock()
		delete(c.inflight, i)
		if err == nil {
			c.spooled[i] = true
		}
		c.mu.Unlock()
		close(done)
		return sealed, err
	}
}

// plainBuffers are the buffers chunks are read into before sealing: a
// transfer reads one per chunk, and reusing them keeps the garbage
// collector from growing the heap by the megabytes a second that pass.
var plainBuffers = sync.Pool{New: func() any { b := make([]byte, wire.MaxChunkSize); return &b }}

func (c *chunkSource) seal(i uint64) ([]byte, error) {
	bp := plainBuffers.Get().(*[]byte)
	defer plainBuffers.Put(bp)
	buf := (*bp)[:chunkLen(c.size, c.chunkSize, i)]
	if _, err := c.file.ReadAt(buf, int64(i)*int64(c.chunkSize)); err != nil && !(errors.Is(err, io.EOF) && len(buf) == 0) {
		return nil, fmt.Errorf("read the file: %w", err)
	}
	return e2e.SealChunk(c.key, i, buf, rand.Reader)
}

// Close releases the file and deletes the spool.
func (c *chunkSource) Close() {
	c.file.Close()
	if c.spool != nil {
		c.spool.Close()
		os.Remove(c.spool.Name())
	}
}

// closeSources releases the files being sent (at log-out); the next
// fetch opens them again.
func (e *Engine) closeSources() {
	outs, _ := e.xfers.all()
	for _, x := range outs {
		x.mu.Lock()
		src := x.src
		x.src = nil
		x.mu.Unlock()
		if src != nil {
			src.Close()
		}
	}
}
