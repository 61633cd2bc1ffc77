package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/e2em/e2em/desktop/engine/downloads"
	"github.com/e2em/e2em/desktop/engine/store"
	"github.com/e2em/e2em/desktop/engine/wire"
)

// Transfer states, as Transfers and the file events report them.
const (
	TransferPreparing = store.XferPreparing
	TransferOffered   = store.XferOffered
	TransferWaiting   = store.XferWaiting
	TransferActive    = store.XferActive
	TransferDone      = store.XferDone
	TransferFailed    = store.XferFailed
	TransferCancelled = store.XferCancelled
)

// Transfer is a file on its way, in either direction, as the faces show
// it.
type Transfer struct {
	ID       string `json:"id"`
	Outgoing bool   `json:"outgoing"`
	// Peer is the sender of an incoming file, or the one recipient of a
	// file sent to a person.
	Peer   string   `json:"peer,omitempty"`
	Groups []string `json:"groups,omitempty"` // a file sent to groups
	Group  string   `json:"group,omitempty"`  // an incoming file's group
	Name   string   `json:"name"`
	// Path is the file read (outgoing) or where it was saved (incoming,
	// once done).
	Path string `json:"path,omitempty"`
	Size int64  `json:"size"`
	// Done counts up to Total: bytes stored here (incoming), or by the
	// recipients, all of them summed (outgoing).
	Done       int64               `json:"done"`
	Total      int64               `json:"total"`
	Rate       float64             `json:"rate"` // bytes per second, lately
	State      string              `json:"state"`
	Via        string              `json:"via,omitempty"`
	Error      string              `json:"error,omitempty"`
	Started    time.Time           `json:"started"`
	Recipients []TransferRecipient `json:"recipients,omitempty"`
}

// TransferRecipient is one recipient's part of an outgoing transfer.
type TransferRecipient struct {
	Login  string `json:"login"`
	State  string `json:"state"`
	Via    string `json:"via,omitempty"`
	Stored int64  `json:"stored"` // bytes the recipient stored (or that wait in its mailbox)
	Sent   int64  `json:"sent"`   // bytes sent on streams, resends included
	Error  string `json:"error,omitempty"`
}

// ProgressText says how far a transfer is, as the faces show it beside a
// progress bar: "Sending payload.bin: 12.1 MB of 20.0 MB, 16.6 MB/s".
func (t *Transfer) ProgressText() string {
	verb := "Receiving"
	if t.Outgoing {
		verb = "Sending"
	}
	text := fmt.Sprintf("%s %s: %s of %s", verb, t.Name, downloads.HumanBytes(t.Done), downloads.HumanBytes(t.Total))
	if t.Rate > 0 {
		text += fmt.Sprintf(", %s/s", downloads.HumanBytes(int64(t.Rate)))
	}
	return text
}

// Finished reports whether the transfer has ended, one way or another.
func (t *Transfer) Finished() bool { return store.XferFinished(t.State) }

// transferTable holds every transfer of the profile, loaded at start so
// that Transfers works before log-in; the live work (serving, fetching,
// mailbox puts) runs while someone is logged in.
type transferTable struct {
	mu  sync.Mutex
	out map[string]*outXfer
	in  map[string]*inXfer
}

// meter follows a rate of bytes: the average over the last quarter
// seconds, smoothed.
type meter struct {
	since time.Time
	bytes int64
	rate  float64
}

func (m *meter) add(n int64, now time.Time) {
	if m.since.IsZero() {
		m.since = now
	}
	m.bytes += n
	if dt := now.Sub(m.since); dt >= 250*time.Millisecond {
		inst := float64(m.bytes) / dt.Seconds()
		if m.rate == 0 {
			m.rate = inst
		} else {
			m.rate = (m.rate + inst) / 2
		}
		m.since, m.bytes = now, 0
	}
}

// progressEvery spaces progress events of one transfer (about ten a
// second at most).
const progressEvery = 100 * time.Millisecond

func newTransferTable() *transferTable {
	return &transferTable{out: map[string]*outXfer{}, in: map[string]*inXfer{}}
}

// load adds the transfers a profile keeps (when it is unlocked).
func (t *transferTable) load(st *store.Store) error {
	outs, err := st.OutTransfers()
	if err != nil {
		return fmt.Errorf("read transfers: %w", err)
	}
	ins, err := st.InTransfers()
	if err != nil {
		return fmt.Errorf("read transfers: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range outs {
		t.out[r.ID] = &outXfer{rec: r}
	}
	for _, r := range ins {
		t.in[r.Key] = &inXfer{rec: r, wake: make(chan struct{}, 1)}
	}
	return nil
}

func (t *transferTable) outgoing(id string) *outXfer {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.out[id]
}

func (t *transferTable) incoming(key string) *inXfer {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.in[key]
}

func (t *transferTable) all() ([]*outXfer, []*inXfer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	outs := make([]*outXfer, 0, len(t.out))
	for _, x := range t.out {
		outs = append(outs, x)
	}
	ins := make([]*inXfer, 0, len(t.in))
	for _, x := range t.in {
		ins = append(ins, x)
	}
	return outs, ins
}

// incomingKey names an incoming transfer locally: the sender's transfer
// ids are unique only per sender.
func incomingKey(from, id string) string {
	h := sha256.Sum256([]byte(from + "\x00" + id))
	return hex.EncodeToString(h[:12])
}

// Transfers lists every transfer, newest last.
func (e *Engine) Transfers() []Transfer {
	outs, ins := e.xfers.all()
	var list []Transfer
	for _, x := range outs {
		list = append(list, x.snapshot())
	}
	for _, x := range ins {
		list = append(list, x.snapshot())
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Started.Before(list[j].Started) })
	return list
}

// Transfer returns one transfer by its id, or a prefix of it that names
// only one.
func (e *Engine) Transfer(id string) (Transfer, error) {
	var found []Transfer
	for _, t := range e.Transfers() {
		if t.ID == id {
			return t, nil
		}
		if len(id) >= 4 && strings.HasPrefix(t.ID, id) {
			found = append(found, t)
		}
	}
	switch len(found) {
	case 0:
		return Transfer{}, fmt.Errorf("no transfer %q; Transfers lists them", id)
	case 1:
		return found[0], nil
	}
	return Transfer{}, fmt.Errorf("%q names %d transfers; give more of the id", id, len(found))
}

// Cancel stops a transfer on both sides: the other side is told, a
// partial file is deleted.
func (e *Engine) Cancel(ctx context.Context, id string) (Transfer, error) {
	s, err := e.current()
	if err != nil {
		return Transfer{}, err
	}
	t, err := e.Transfer(id)
	if err != nil {
		return Transfer{}, err
	}
	if t.Finished() {
		return t, fmt.Errorf("%s is %s already", t.Name, t.State)
	}
	if t.Outgoing {
		e.cancelOutgoing(s, e.xfers.outgoing(t.ID), "the sender cancelled it")
	} else {
		e.cancelIncoming(s, e.xfers.incoming(t.ID), true, "")
	}
	t, err = e.Transfer(t.ID)
	return t, err
}

// fileEvent reports a transfer's news.
func (e *Engine) fileEvent(kind EventKind, t Transfer, text string) {
	ev := Event{Kind: kind, ID: t.ID, Transfer: &t, Text: text}
	if t.Outgoing {
		ev.To = t.Peer
		if ev.To == "" {
			ev.Group = strings.Join(t.Groups, ",")
		}
	} else {
		ev.From, ev.Group = t.Peer, t.Group
	}
	e.emit(ev)
}

// sizeText is a file's name and size as messages show them.
func sizeText(name string, size int64) string {
	return fmt.Sprintf("%s (%s)", name, downloads.HumanBytes(size))
}

// chunkLen is the plaintext length of chunk i of a file.
func chunkLen(size int64, chunkSize uint32, i uint64) int64 {
	start := int64(i) * int64(chunkSize)
	return max(0, min(int64(chunkSize), size-start))
}

func chunkCount(size int64, chunkSize uint32) uint64 {
	return wire.ChunkCount(uint64(size), chunkSize)
}

func hasChunk(have []byte, i uint64) bool {
	return i/8 < uint64(len(have)) && have[i/8]&(1<<(i%8)) != 0
}

func setChunk(have []byte, i uint64) { have[i/8] |= 1 << (i % 8) }
