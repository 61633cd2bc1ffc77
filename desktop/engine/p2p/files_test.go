package p2p

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/e2em/e2em/desktop/engine/wire"
)

// sliceFeed serves fixed chunks, skipping those the Get says are there,
// and records what the flow control let through.
type sliceFeed struct {
	chunks [][]byte
	next   int
	have   []byte
	mu     sync.Mutex
	sent   int
	stored []uint64
	closed bool
}

func (f *sliceFeed) Next(ctx context.Context) (uint64, []byte, error) {
	for f.next < len(f.chunks) {
		i := f.next
		f.next++
		if i/8 < len(f.have) && f.have[i/8]&(1<<(i%8)) != 0 {
			continue
		}
		return uint64(i), f.chunks[i], nil
	}
	return 0, nil, io.EOF
}
func (f *sliceFeed) Sent(n int) { f.mu.Lock(); f.sent += n; f.mu.Unlock() }
func (f *sliceFeed) Stored(i uint64) {
	f.mu.Lock()
	f.stored = append(f.stored, i)
	f.mu.Unlock()
}
func (f *sliceFeed) Close() { f.mu.Lock(); f.closed = true; f.mu.Unlock() }

func (f *sliceFeed) state() (sent int, stored int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent, len(f.stored)
}

// mapSink stores chunks in memory, slowly, and checks that the sender
// never has more than the window in flight.
type mapSink struct {
	got     map[uint64][]byte
	feed    *sliceFeed
	failAt  int64 // fail when asked to store this index (-1: never)
	maxAhed int
}

func (s *mapSink) Store(i uint64, sealed []byte, _ bool) error {
	if int64(i) == s.failAt {
		return errors.New("chunk failed its check")
	}
	time.Sleep(2 * time.Millisecond) // a slow disk: the sender must wait
	sent, stored := s.feed.state()
	// Bytes sent beyond the chunks the sender heard were stored.
	ahead := sent - stored*chunkFrameLen(len(sealed))
	s.maxAhed = max(s.maxAhed, ahead)
	s.got[i] = bytes.Clone(sealed)
	return nil
}

func chunkFrameLen(n int) int {
	return int(frameLen(&wire.FileFrame{Kind: &wire.FileFrame_Data{Data: &wire.FileData{Index: 1, Sealed: make([]byte, n)}}}))
}

func filePair(t *testing.T, feed func(FileRequest) (ChunkFeed, error)) (*node, *node) {
	alice, bob := newNode(t, "alice101"), newNode(t, "bob102")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ServeFiles(ctx, alice.h, func(_ context.Context, r FileRequest) (ChunkFeed, error) { return feed(r) },
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	return alice, bob
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func chunks(n, size int) [][]byte {
	var out [][]byte
	for i := 0; i < n; i++ {
		out = append(out, bytes.Repeat([]byte{byte(i)}, size))
	}
	return out
}

func TestFetchHonoursCreditAndResumes(t *testing.T) {
	const size = 64 << 10
	all := chunks(24, size)
	var feeds []*sliceFeed
	var mu sync.Mutex
	alice, bob := filePair(t, func(r FileRequest) (ChunkFeed, error) {
		if r.Get.TransferId != "ab12" {
			return nil, fmt.Errorf("no transfer %s", r.Get.TransferId)
		}
		f := &sliceFeed{chunks: all, have: r.Get.Have}
		mu.Lock()
		feeds = append(feeds, f)
		mu.Unlock()
		return f, nil
	})
	window := uint64(chunkFrameLen(size) * 3 / 2)
	// The first fetch stops at chunk 10 (it fails its check).
	sink := &mapSink{got: map[uint64][]byte{}, failAt: 10}
	feedOf := func(i int) *sliceFeed {
		mu.Lock()
		defer mu.Unlock()
		return feeds[i]
	}
	sinkFeed := &lazyFeedSink{sink: sink, feed: func() *sliceFeed { return feedOf(0) }}
	_, err := Fetch(context.Background(), bob.h, bob.target(alice), &wire.FileGet{TransferId: "ab12", Window: window}, sinkFeed, discard)
	if err == nil || len(sink.got) != 10 {
		t.Fatalf("first fetch: %v, %d chunks", err, len(sink.got))
	}
	if sink.maxAhed > int(window) {
		t.Fatalf("the sender ran %d bytes ahead of what was stored; the window is %d", sink.maxAhed, window)
	}
	// The second asks only for what is missing.
	have := make([]byte, 3)
	for i := range sink.got {
		have[i/8] |= 1 << (i % 8)
	}
	sink.failAt = -1
	sinkFeed.feed = func() *sliceFeed { return feedOf(1) }
	stats, err := Fetch(context.Background(), bob.h, bob.target(alice), &wire.FileGet{TransferId: "ab12", Have: have, Window: window}, sinkFeed, discard)
	if err != nil || stats.Chunks != 14 || len(sink.got) != 24 {
		t.Fatalf("second fetch: %v, %d chunks this time, %d in all", err, stats.Chunks, len(sink.got))
	}
	for i, c := range all {
		if !bytes.Equal(sink.got[uint64(i)], c) {
			t.Fatalf("chunk %d differs", i)
		}
	}
	// The sender heard every chunk stored, and the end of the stream.
	waitUntil(t, func() bool { _, stored := feedOf(1).state(); return stored == 14 && feedOf(1).isClosed() })
	if sent, _ := feedOf(1).state(); sent != 14*chunkFrameLen(size) {
		t.Fatalf("second fetch sent %d bytes for 14 chunks", sent)
	}
	// Nothing failed twice: the first stream sent chunk 10 and what the
	// window allowed after it, no more.
	if sent, _ := feedOf(0).state(); sent > 11*chunkFrameLen(size)+int(window) {
		t.Fatalf("the failed stream sent %d bytes", sent)
	}
}

// lazyFeedSink is a ChunkSink that measures against the feed serving it.
type lazyFeedSink struct {
	sink *mapSink
	feed func() *sliceFeed
}

func (l *lazyFeedSink) Store(i uint64, sealed []byte, relayed bool) error {
	l.sink.feed = l.feed()
	return l.sink.Store(i, sealed, relayed)
}

func (f *sliceFeed) isClosed() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.closed }

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFetchRefusedWithReason(t *testing.T) {
	alice, bob := filePair(t, func(r FileRequest) (ChunkFeed, error) {
		return nil, errors.New("that transfer was cancelled")
	})
	_, err := Fetch(context.Background(), bob.h, bob.target(alice), &wire.FileGet{TransferId: "ab"}, &mapSink{got: map[uint64][]byte{}, failAt: -1}, discard)
	var rej *RefusedError
	if !errors.As(err, &rej) || rej.Reason != "that transfer was cancelled" {
		t.Fatalf("got %v", err)
	}
}

// A sender that ignores the credit and floods gets no further than the
// stream's own flow control lets it: the recipient reads at the pace it
// stores, so what the flooder wrote and the recipient has not stored stays
// bounded, and the recipient stores every chunk whole.
func TestFloodingSenderIsHeldBack(t *testing.T) {
	alice, bob := newNode(t, "alice101"), newNode(t, "bob102")
	var written sync.Map // frames written → when
	const frames, size = 96, 64 << 10
	alice.h.SetStreamHandler(FileProtocolID, func(st network.Stream) {
		defer st.Close()
		for i := uint64(0); i < frames; i++ {
			if wire.WriteFileFrame(st, &wire.FileFrame{Kind: &wire.FileFrame_Data{Data: &wire.FileData{Index: i, Sealed: bytes.Repeat([]byte{byte(i)}, size)}}}) != nil {
				return
			}
			written.Store(i, true)
		}
	})
	sink := &aheadSink{got: map[uint64][]byte{}, written: &written}
	_, err := Fetch(context.Background(), bob.h, bob.target(alice), &wire.FileGet{TransferId: "ab", Window: 100 << 10}, sink, discard)
	if err != nil && !errors.Is(err, ErrOverrun) {
		t.Fatalf("fetch: %v", err)
	}
	// yamux's initial window (256 KiB) and the fetch's read buffer (about
	// 1 MiB) are all a flooder can fill.
	if limit := (2 << 20) / size; sink.maxAhead > limit {
		t.Fatalf("the flooder got %d chunks ahead of what was stored (limit %d)", sink.maxAhead, limit)
	}
	t.Logf("flooder got at most %d chunks ahead", sink.maxAhead)
	for i, c := range sink.got {
		if len(c) != size || c[0] != byte(i) {
			t.Fatalf("chunk %d stored damaged", i)
		}
	}
}

type aheadSink struct {
	got      map[uint64][]byte
	written  *sync.Map
	maxAhead int
}

func (s *aheadSink) Store(i uint64, sealed []byte, _ bool) error {
	time.Sleep(10 * time.Millisecond) // a slow disk
	n := 0
	s.written.Range(func(any, any) bool { n++; return true })
	s.maxAhead = max(s.maxAhead, n-len(s.got))
	s.got[i] = bytes.Clone(sealed)
	return nil
}

// The hand-made header before a chunk is exactly what the protobuf
// encoder writes for the whole frame.
func TestDataFrameHeaderMatchesProtobuf(t *testing.T) {
	for _, idx := range []uint64{0, 1, 127, 128, 1 << 20} {
		for _, n := range []int{1, 127, 128, 512<<10 + 62} { // a sealed chunk is never empty
			sealed := bytes.Repeat([]byte{7}, n)
			var want bytes.Buffer
			if err := wire.WriteFileFrame(&want, &wire.FileFrame{Kind: &wire.FileFrame_Data{Data: &wire.FileData{Index: idx, Sealed: sealed}}}); err != nil {
				t.Fatal(err)
			}
			got := append(dataFrameHeader(idx, n), sealed...)
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("index %d, %d bytes: header differs", idx, n)
			}
		}
	}
}
