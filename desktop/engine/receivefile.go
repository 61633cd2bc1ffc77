package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/downloads"
	"github.com/e2em/e2em/desktop/engine/e2e"
	"github.com/e2em/e2em/desktop/engine/p2p"
	"github.com/e2em/e2em/desktop/engine/store"
	"github.com/e2em/e2em/desktop/engine/wire"
)

// inXfer is a file this profile receives. mu guards rec and the rest.
type inXfer struct {
	mu       sync.Mutex
	rec      *store.InTransfer
	file     *os.File // the partial file, open while receiving
	failures map[uint64]int
	meter    meter
	lastEmit time.Time
	fetching bool          // a fetch loop runs
	wake     chan struct{} // try fetching (again) now
	stop     context.CancelFunc
}

func (x *inXfer) snapshot() Transfer {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.view()
}

// view is snapshot with x.mu held.
func (x *inXfer) view() Transfer {
	r := x.rec
	t := Transfer{ID: r.Key, Peer: r.From, Group: r.Group, Name: r.Name, Path: r.Path, Size: r.Size,
		Total: r.Size, State: r.State, Via: r.Via, Error: r.Error, Started: r.Created, Rate: x.meter.rate}
	n := chunkCount(r.Size, r.ChunkSize)
	for i := uint64(0); i < n; i++ {
		if hasChunk(r.Have, i) {
			t.Done += chunkLen(r.Size, r.ChunkSize, i)
		}
	}
	if store.XferFinished(t.State) {
		t.Rate = 0
	}
	return t
}

// Limits on what others can make this client receive at once (each
// reserves disk space and keeps a file open).
const (
	maxIncomingPerSender = 16
	maxIncoming          = 64
	// maxChunkFailures: a chunk that fails its check this often ends the
	// transfer (someone keeps tampering with it).
	maxChunkFailures = 3
)

func (e *Engine) wakeIncoming(x *inXfer) {
	select {
	case x.wake <- struct{}{}:
	default:
	}
}

// fileOffered takes a file's manifest from from: it makes the partial file
// (refusing, and telling the sender, when the disk is too small or too
// much arrives at once) and starts fetching. A repeated offer changes
// nothing.
func (e *Engine) fileOffered(s *online, from string, o *wire.FileOffer) error {
	if err := wire.ValidateOffer(o); err != nil {
		e.emit(Event{Kind: EventSecurity, From: from, Text: fmt.Sprintf("refused a file offer from %s: %v", from, err)})
		return nil
	}
	key := incomingKey(from, o.TransferId)
	e.xfers.mu.Lock()
	if _, known := e.xfers.in[key]; known {
		e.xfers.mu.Unlock()
		return nil
	}
	fromSender, active := 0, 0
	for _, x := range e.xfers.in {
		x.mu.Lock()
		if !store.XferFinished(x.rec.State) {
			active++
			if x.rec.From == from {
				fromSender++
			}
		}
		x.mu.Unlock()
	}
	rec := &store.InTransfer{Key: key, From: from, ID: o.TransferId, Name: downloads.SanitizeName(o.Name),
		Size: int64(o.Size), ChunkSize: o.ChunkSize, SHA256: o.Sha256, FileKey: o.FileKey, Token: o.Token,
		Group: o.Group, Created: time.Now(), State: store.XferActive,
		Have: make([]byte, (chunkCount(int64(o.Size), o.ChunkSize)+7)/8)}
	x := &inXfer{rec: rec, wake: make(chan struct{}, 1), failures: map[uint64]int{}}
	// Reserved in the table before the slow work, so that parallel offers
	// cannot all pass the limits.
	refusal := ""
	switch {
	case fromSender >= maxIncomingPerSender:
		refusal = fmt.Sprintf("%s already sends %d files to %s; send this one when they are through", from, fromSender, s.login)
	case active >= maxIncoming:
		refusal = fmt.Sprintf("%s receives %d files already; try again later", s.login, active)
	}
	if refusal != "" {
		rec.State, rec.Error = store.XferFailed, refusal
	}
	e.xfers.in[key] = x
	e.xfers.mu.Unlock()

	if refusal == "" {
		f, err := e.downloads.CreatePartial(key, rec.Size)
		switch {
		case errors.Is(err, downloads.ErrNoSpace):
			rec.State, rec.Error = store.XferFailed, fmt.Sprintf("not enough free space on %s's machine: %s", s.login, strings.TrimPrefix(err.Error(), downloads.ErrNoSpace.Error()+": "))
		case err != nil:
			rec.State, rec.Error = store.XferFailed, fmt.Sprintf("%s cannot store the file: %v", s.login, err)
		default:
			x.file = f
		}
	}
	if err := e.store.PutInTransfer(rec); err != nil {
		// Not acknowledged: the offer comes again.
		e.xfers.mu.Lock()
		delete(e.xfers.in, key)
		e.xfers.mu.Unlock()
		if x.file != nil {
			x.file.Close()
			e.downloads.RemovePartial(key)
		}
		return err
	}
	snap := x.snapshot()
	if rec.State == store.XferFailed {
		e.queueControl(s, from, o.TransferId, &wire.Payload{Kind: &wire.Payload_FileResult{FileResult: &wire.FileResult{TransferId: o.TransferId, Reason: rec.Error}}})
		e.fileEvent(EventFileFailed, snap, fmt.Sprintf("refused %s from %s: %s", sizeText(rec.Name, rec.Size), from, rec.Error))
		return nil
	}
	e.fileEvent(EventFileOffered, snap, fmt.Sprintf("%s sends %s", from, sizeText(rec.Name, rec.Size)))
	e.startFetch(s, x)
	return nil
}

// startFetch runs the fetch loop of x unless it runs already.
func (e *Engine) startFetch(s *online, x *inXfer) {
	x.mu.Lock()
	if x.fetching || store.XferFinished(x.rec.State) {
		x.mu.Unlock()
		return
	}
	x.fetching = true
	ctx, cancel := context.WithCancel(s.ctx)
	x.stop = cancel
	x.mu.Unlock()
	e.spawn(s, func(s *online) {
		defer func() {
			cancel()
			x.mu.Lock()
			x.fetching = false
			x.mu.Unlock()
		}()
		e.fetchLoop(ctx, s, x)
	})
}

// fetchLoop fetches what x lacks from its sender until it has it all,
// coming back after a broken connection, a restart of either side or a
// relay that went away, from the last chunk stored. Chunks may also arrive
// meanwhile through the mailbox.
func (e *Engine) fetchLoop(ctx context.Context, s *online, x *inXfer) {
	backoff := api.Backoff{Min: time.Second, Max: 30 * time.Second}
	for ctx.Err() == nil {
		x.mu.Lock()
		rec := x.rec
		if store.XferFinished(rec.State) {
			x.mu.Unlock()
			return
		}
		complete := x.completeLocked()
		get := &wire.FileGet{TransferId: rec.ID, Token: rec.Token, Have: append([]byte(nil), rec.Have...), Window: p2p.FileWindow}
		x.mu.Unlock()
		if complete {
			e.finishIncoming(s, x)
			return
		}
		var stats p2p.FetchStats
		t, err := e.target(ctx, s, rec.From, false)
		if err == nil {
			start := time.Now()
			stats, err = p2p.Fetch(ctx, s.host, *t, get, &sink{e: e, s: s, x: x}, e.log)
			e.log.Info("file fetch ended", "from", rec.From, "file", rec.Name, "chunks", stats.Chunks,
				"relay", stats.Relay, "took", time.Since(start).Round(time.Millisecond), "err", err)
		}
		if stats.Chunks > 0 {
			backoff.Reset()
		}
		var refused *p2p.RefusedError
		switch {
		case err == nil:
			continue // the sender sent all it had; check, then finish
		case errors.Is(err, p2p.ErrMovedDirect):
			continue // the rest the direct way, at once
		case errors.As(err, &refused) && refused.Cancelled:
			e.cancelIncoming(s, x, false, fmt.Sprintf("%s cancelled it", rec.From))
			return
		case errors.As(err, &refused):
			e.endIncoming(s, x, store.XferFailed, fmt.Sprintf("%s refused: %s", rec.From, bounded(refused.Reason, 300)), false)
			return
		case errors.Is(err, errTooManyFailures):
			e.endIncoming(s, x, store.XferFailed, err.Error(), true)
			return
		}
		if ctx.Err() != nil {
			return
		}
		e.forget(s, rec.From)
		select {
		case <-ctx.Done():
			return
		case <-x.wake:
			backoff.Reset() // the sender is back: try at once
			continue
		case <-time.After(backoff.Next()):
		}
	}
}

var errTooManyFailures = errors.New("a chunk failed its check too often")

// completeLocked reports whether every chunk is stored; x.mu is held.
func (x *inXfer) completeLocked() bool {
	n := chunkCount(x.rec.Size, x.rec.ChunkSize)
	for i := uint64(0); i < n; i++ {
		if !hasChunk(x.rec.Have, i) {
			return false
		}
	}
	return true
}

// sink stores fetched chunks.
type sink struct {
	e *Engine
	s *online
	x *inXfer
}

func (k *sink) Store(i uint64, sealed []byte, relayed bool) error {
	via := ViaDirect
	if relayed {
		via = ViaRelay
	}
	return k.e.storeChunk(k.x, i, sealed, via)
}

// storeChunk checks chunk i against the file key and its index, writes it
// in place and records it, before its credit goes back. A chunk that fails
// its check is reported and fetched again.
func (e *Engine) storeChunk(x *inXfer, i uint64, sealed []byte, via string) error {
	x.mu.Lock()
	rec := x.rec
	if store.XferFinished(rec.State) || x.file == nil {
		x.mu.Unlock()
		return fmt.Errorf("%s is %s", rec.Name, rec.State)
	}
	n := chunkCount(rec.Size, rec.ChunkSize)
	if i >= n {
		x.mu.Unlock()
		return fmt.Errorf("chunk %d of a file of %d chunks", i, n)
	}
	if hasChunk(rec.Have, i) {
		x.mu.Unlock()
		return nil // also came another way
	}
	key, size, chunkSize, from, name := rec.FileKey, rec.Size, rec.ChunkSize, rec.From, rec.Name
	file := x.file
	x.mu.Unlock()
	want := chunkLen(size, chunkSize, i)
	pt, err := e2e.OpenChunk(key, i, sealed, 0)
	if err == nil && int64(len(pt)) != want {
		err = fmt.Errorf("chunk %d has %d bytes, not %d", i, len(pt), want)
	}
	if err != nil {
		x.mu.Lock()
		x.failures[i]++
		fails := x.failures[i]
		x.mu.Unlock()
		e.emit(Event{Kind: EventSecurity, From: from, Text: fmt.Sprintf("rejected chunk %d of %s from %s: %v (it is fetched again)", i, name, from, err)})
		if fails >= maxChunkFailures {
			return fmt.Errorf("%w: chunk %d of %s failed %d times", errTooManyFailures, i, name, fails)
		}
		return fmt.Errorf("chunk %d: %w", i, err)
	}
	if _, err := file.WriteAt(pt, int64(i)*int64(chunkSize)); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if store.XferFinished(rec.State) {
		return fmt.Errorf("%s is %s", rec.Name, rec.State)
	}
	setChunk(rec.Have, i)
	rec.Via = via
	if err := e.store.PutInTransfer(rec); err != nil {
		rec.Have[i/8] &^= 1 << (i % 8)
		return fmt.Errorf("record progress: %w", err)
	}
	now := time.Now()
	x.meter.add(want, now)
	if now.Sub(x.lastEmit) >= progressEvery {
		x.lastEmit = now
		snap := x.view()
		e.fileEvent(EventFileProgress, snap, "")
	}
	return nil
}

// mailedChunk takes a chunk that came through the mailbox.
func (e *Engine) mailedChunk(s *online, from string, c *wire.FileChunk) {
	x := e.xfers.incoming(incomingKey(from, c.TransferId))
	if x == nil {
		e.emit(Event{Kind: EventSecurity, From: from, Text: fmt.Sprintf("ignored a file chunk from %s for a transfer nobody offered", from)})
		return
	}
	if err := e.storeChunk(x, c.Index, c.Sealed, ViaMailbox); err != nil {
		e.log.Info("mailbox chunk not stored", "from", from, "err", err)
		return
	}
	x.mu.Lock()
	complete := x.completeLocked()
	x.mu.Unlock()
	if complete {
		e.wakeIncoming(x)
		e.startFetch(s, x) // finishes it (no fetch is needed)
	}
}

// finishIncoming checks the whole file against the manifest's SHA-256,
// gives it its name in the downloads folder and tells the sender; a file
// that does not match is deleted, and the sender told that too.
func (e *Engine) finishIncoming(s *online, x *inXfer) {
	x.mu.Lock()
	rec := x.rec
	file := x.file
	x.mu.Unlock()
	if file == nil {
		return
	}
	h := sha256.New()
	if _, err := io.CopyBuffer(h, io.NewSectionReader(file, 0, rec.Size), make([]byte, 1<<20)); err != nil {
		e.endIncoming(s, x, store.XferFailed, fmt.Sprintf("cannot read the received file back: %v", err), true)
		return
	}
	if !bytes.Equal(h.Sum(nil), rec.SHA256) {
		e.endIncoming(s, x, store.XferFailed, fmt.Sprintf("%s does not match its SHA-256 from the offer; it was deleted", rec.Name), true)
		return
	}
	file.Sync()
	file.Close()
	x.mu.Lock()
	x.file = nil
	x.mu.Unlock()
	path, err := e.downloads.Finish(rec.Key, rec.Name)
	if err != nil {
		e.endIncoming(s, x, store.XferFailed, err.Error(), true)
		return
	}
	x.mu.Lock()
	rec.State, rec.Path = store.XferDone, path
	err = e.store.PutInTransfer(rec)
	snap := x.view()
	x.mu.Unlock()
	if err != nil {
		e.log.Error("record a received file", "err", err)
	}
	m := &store.Message{ID: "file-" + rec.Key, Peer: rec.From, Group: rec.Group, From: rec.From,
		Body: sizeText(rec.Name, rec.Size), Sent: rec.Created, State: store.StateReceived,
		File: &store.FileRef{Transfer: rec.Key, Name: rec.Name, Size: rec.Size, Path: path}}
	if _, err := e.store.AddMessage(m); err != nil {
		e.log.Error("record a received file in the history", "err", err)
	}
	e.queueControl(s, rec.From, rec.ID, &wire.Payload{Kind: &wire.Payload_FileResult{FileResult: &wire.FileResult{TransferId: rec.ID, Ok: true}}})
	e.fileEvent(EventFileDone, snap, fmt.Sprintf("%s sent %s: saved to %s", rec.From, sizeText(rec.Name, rec.Size), path))
}

// endIncoming ends x: the partial file goes, and the sender is told when
// tell is set (a failure found here, or a cancel from here).
func (e *Engine) endIncoming(s *online, x *inXfer, state, why string, tell bool) {
	x.mu.Lock()
	rec := x.rec
	if store.XferFinished(rec.State) {
		x.mu.Unlock()
		return
	}
	rec.State, rec.Error = state, why
	if x.file != nil {
		x.file.Close()
		x.file = nil
	}
	e.downloads.RemovePartial(rec.Key)
	if err := e.store.PutInTransfer(rec); err != nil {
		e.log.Error("record a transfer's end", "err", err)
	}
	if x.stop != nil {
		x.stop()
	}
	snap := x.view()
	x.mu.Unlock()
	if tell {
		if state == store.XferCancelled {
			e.queueControl(s, rec.From, rec.ID, &wire.Payload{Kind: &wire.Payload_FileCancel{FileCancel: &wire.FileCancel{TransferId: rec.ID, Reason: why}}})
		} else {
			e.queueControl(s, rec.From, rec.ID, &wire.Payload{Kind: &wire.Payload_FileResult{FileResult: &wire.FileResult{TransferId: rec.ID, Reason: why}}})
		}
	}
	kind := EventFileFailed
	if state == store.XferCancelled {
		kind = EventFileCancelled
	}
	e.fileEvent(kind, snap, why)
}

// cancelIncoming stops receiving x; byUs tells the sender.
func (e *Engine) cancelIncoming(s *online, x *inXfer, byUs bool, why string) {
	if why == "" {
		why = "you cancelled it"
	}
	e.endIncoming(s, x, store.XferCancelled, why, byUs)
}

// fileCancelled hears a cancellation from the other side of a transfer:
// the sender (of a file coming here) or a recipient (of one going there).
func (e *Engine) fileCancelled(s *online, from string, c *wire.FileCancel) {
	if x := e.xfers.incoming(incomingKey(from, c.TransferId)); x != nil {
		e.cancelIncoming(s, x, false, fmt.Sprintf("%s cancelled it: %s", from, bounded(c.Reason, 200)))
		return
	}
	e.fileCancelledBy(from, c)
}

// resumeIncoming reopens the partial files and starts fetching again after
// a log-in.
func (e *Engine) resumeIncoming(s *online) {
	_, ins := e.xfers.all()
	for _, x := range ins {
		x.mu.Lock()
		active := x.rec.State == store.XferActive
		if active && x.file == nil {
			f, err := e.downloads.OpenPartial(x.rec.Key)
			if err != nil {
				x.mu.Unlock()
				e.endIncoming(s, x, store.XferFailed, fmt.Sprintf("the partial file is gone: %v", err), true)
				continue
			}
			x.file = f
		}
		if x.failures == nil {
			x.failures = map[uint64]int{}
		}
		x.mu.Unlock()
		if active {
			e.startFetch(s, x)
		}
	}
}

// senderOnline wakes the fetches from login (its keys were published
// again: it logged in).
func (e *Engine) senderOnline(login string) {
	_, ins := e.xfers.all()
	for _, x := range ins {
		x.mu.Lock()
		match := x.rec.From == login && x.rec.State == store.XferActive
		x.mu.Unlock()
		if match {
			e.wakeIncoming(x)
		}
	}
}

// closeIncomingFiles closes the partial files (at log-out).
func (e *Engine) closeIncomingFiles() {
	_, ins := e.xfers.all()
	for _, x := range ins {
		x.mu.Lock()
		if x.file != nil {
			x.file.Close()
			x.file = nil
		}
		x.mu.Unlock()
	}
}
