package e2e

import (
	"bytes"
	"crypto/cipher"
	"crypto/des"
	"crypto/rand"
	"errors"
	"runtime"
	"testing"
)

func TestChunkRoundTripAllSizes(t *testing.T) {
	fk, err := NewFileKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 7, 8, 9, parallelMin - 1, parallelMin, parallelMin + 13, 512 << 10} {
		pt := make([]byte, n)
		rand.Read(pt)
		rec, err := SealChunk(fk, 5, pt, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if len(rec) != SealedLen(n) {
			t.Fatalf("%d bytes sealed to %d, SealedLen says %d", n, len(rec), SealedLen(n))
		}
		for _, workers := range []int{1, 2, 3, 0} {
			got, err := OpenChunk(fk, 5, rec, workers)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("%d bytes, %d workers: %v", n, workers, err)
			}
		}
	}
}

// Decrypting in segments on several cores gives what one sequential CBC
// pass of the standard library gives.
func TestParallelOpenMatchesSequentialCBC(t *testing.T) {
	k := testKeys()
	pt := make([]byte, 300<<10+5)
	rand.Read(pt)
	rec, err := Seal(k, 0, 0, pt, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := des.NewTripleDESCipher(k.Cipher[:])
	body := rec[headerLen : len(rec)-tagLen]
	want := make([]byte, len(body)-ivLen)
	cipher.NewCBCDecrypter(block, body[:ivLen]).CryptBlocks(want, body[ivLen:])
	for _, w := range []int{2, 3, 7, 64} {
		got, err := openParallel(k, rec, w)
		if err != nil || !bytes.Equal(got, want[:len(pt)]) {
			t.Fatalf("%d workers: %v", w, err)
		}
	}
}

func TestChunkRefusesTamperingAndSwaps(t *testing.T) {
	fk, _ := NewFileKey(rand.Reader)
	other, _ := NewFileKey(rand.Reader)
	pt := bytes.Repeat([]byte("chunk"), 30000)
	rec, _ := SealChunk(fk, 3, pt, rand.Reader)
	for _, at := range []int{0, 20, len(rec) / 2, len(rec) - 1} {
		bad := bytes.Clone(rec)
		bad[at] ^= 1
		if _, err := OpenChunk(fk, 3, bad, 0); err == nil {
			t.Fatalf("a chunk with byte %d flipped opened", at)
		}
	}
	if _, err := OpenChunk(fk, 4, rec, 0); !errors.Is(err, ErrChunkIndex) {
		t.Fatalf("chunk 3 opened as chunk 4: %v", err)
	}
	if _, err := OpenChunk(other, 3, rec, 0); !errors.Is(err, ErrBadMAC) {
		t.Fatalf("a chunk opened under another file's key: %v", err)
	}
	if _, err := OpenChunk(fk, 3, rec[:len(rec)-8], 0); err == nil {
		t.Fatal("a truncated chunk opened")
	}
	// Chunk 4 relabelled as chunk 3 (header rewritten) fails its MAC.
	rec4, _ := SealChunk(fk, 4, pt, rand.Reader)
	rec4[13] = 3
	if _, err := OpenChunk(fk, 3, rec4, 0); !errors.Is(err, ErrBadMAC) {
		t.Fatalf("a relabelled chunk opened: %v", err)
	}
}

// FuzzOpenChunk: whatever a peer sends as a chunk is refused unless the
// file key's holder sealed it for that index.
func FuzzOpenChunk(f *testing.F) {
	fk := bytes.Repeat([]byte{7}, FileKeyLen)
	good, _ := SealChunk(fk, 1, []byte("seed chunk"), zeroReader{})
	f.Add(good, uint64(1))
	f.Add(good, uint64(2))
	f.Add(make([]byte, MinRecordLen), uint64(0))
	f.Add([]byte{1, 1}, uint64(0))
	f.Fuzz(func(t *testing.T, rec []byte, i uint64) {
		pt, err := OpenChunk(fk, i, rec, 2)
		if err == nil && (!bytes.Equal(rec, good) || i != 1) {
			t.Fatalf("opened a chunk nobody sealed: %q", pt)
		}
	})
}

// benchChunk is a file chunk as transfers send it.
const benchChunk = 512 << 10

// BenchmarkChunkCeiling is the 3DES ceiling a file transfer is measured
// against (DESIGN §7): chunks sealed and opened (3DES-CBC and HMAC-SHA256
// both ways) on every core at once, as sender and receiver on one machine
// would do them. SetBytes counts the file's bytes, so MB/s is the most a
// transfer between two processes of this machine can reach.
func BenchmarkChunkCeiling(b *testing.B) {
	fk, _ := NewFileKey(rand.Reader)
	pt := make([]byte, benchChunk)
	rand.Read(pt)
	b.SetBytes(benchChunk)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rec, err := SealChunk(fk, 9, pt, rand.Reader)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := OpenChunk(fk, 9, rec, 1); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkTripleDESCeiling is the bare cipher under BenchmarkChunkCeiling:
// the standard library's 3DES-CBC encrypting then decrypting a chunk on
// every core, without MACs, keys or records.
func BenchmarkTripleDESCeiling(b *testing.B) {
	block, _ := des.NewTripleDESCipher([]byte("0123456789abcdefghijklmn"))
	b.SetBytes(benchChunk)
	b.RunParallel(func(pb *testing.PB) {
		iv := make([]byte, des.BlockSize)
		body := make([]byte, benchChunk)
		for pb.Next() {
			cipher.NewCBCEncrypter(block, iv).CryptBlocks(body, body)
			cipher.NewCBCDecrypter(block, iv).CryptBlocks(body, body)
		}
	})
	b.ReportMetric(float64(runtime.GOMAXPROCS(0)), "cores")
}
