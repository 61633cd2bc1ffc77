// Package e2e owns e2em's end-to-end cryptography (DESIGN.md §5): X25519
// key agreement, HKDF-SHA256 key derivation, the 3DES-CBC + HMAC-SHA256
// record layer with counters and a replay window, the per-epoch ratchet that
// keeps every 3DES key under 2^20 blocks, one-shot envelopes for offline
// recipients, file chunk keys and safety numbers. Pure functions and types:
// no I/O, no clocks except where passed in, no global state.
package e2e

import (
	"crypto/cipher"
	"crypto/des"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
)

// Record layout (all integers big-endian):
//
//	version(1) | type(1) | epoch(4) | counter(8) | IV(8) | ciphertext(8n) | tag(32)
//
// The tag is HMAC-SHA256 over everything before it (encrypt-then-MAC). The
// ciphertext is 3DES-CBC (three independent keys) of the PKCS#7-padded
// plaintext under a fresh random IV.
const (
	Version    = 1
	TypeRecord = 1

	headerLen = 1 + 1 + 4 + 8
	ivLen     = des.BlockSize
	tagLen    = sha256.Size
	// Overhead is what a record adds to its plaintext, padding aside.
	Overhead = headerLen + ivLen + tagLen
	// MinRecordLen is the shortest well-formed record (one padding block).
	MinRecordLen = headerLen + ivLen + des.BlockSize + tagLen
	// MaxPlaintext bounds one record's plaintext (chunks and messages).
	MaxPlaintext = 1 << 20
)

// Errors a receiver reports; none of them says anything about the keys.
var (
	ErrShortRecord = errors.New("record too short")
	ErrVersion     = errors.New("unknown record version or type")
	ErrBadMAC      = errors.New("record failed authentication (tampered, truncated or under another key)")
	ErrPadding     = errors.New("record padding is invalid")
	ErrReplay      = errors.New("record replayed or too far out of order")
	ErrEpoch       = errors.New("record from an unknown key epoch")
	ErrTooLarge    = errors.New("plaintext too large for one record")
)

// Keys encrypt and authenticate records of one direction and epoch.
type Keys struct {
	Cipher [24]byte // three independent 8-byte DES keys
	MAC    [32]byte

	// The 3DES key schedule, made on first use: it costs as much as
	// encrypting a 100-byte message, so a session's keys keep it. A Keys
	// belongs to one sender or one receiver, never used concurrently.
	block cipher.Block
}

func (k *Keys) tripleDES() (cipher.Block, error) {
	if k.block == nil {
		b, err := des.NewTripleDESCipher(k.Cipher[:])
		if err != nil {
			return nil, fmt.Errorf("3DES key: %w", err)
		}
		k.block = b
	}
	return k.block, nil
}

// Header is the authenticated, unencrypted part of a record.
type Header struct {
	Version, Type byte
	Epoch         uint32
	Counter       uint64
}

// BlocksFor is how many 3DES blocks a plaintext of n bytes costs.
func BlocksFor(n int) uint64 { return uint64(n/des.BlockSize + 1) }

// Seal makes a record of plaintext under k. rnd supplies the IV.
func Seal(k *Keys, epoch uint32, counter uint64, plaintext []byte, rnd io.Reader) ([]byte, error) {
	return seal(k, epoch, counter, plaintext, rnd, 0)
}

// seal is Seal; with step > 0 it encrypts step bytes at a time and lets
// other goroutines run in between (a file chunk takes 15 ms of 3DES, and
// the network goroutines waiting behind it would wait that long).
func seal(k *Keys, epoch uint32, counter uint64, plaintext []byte, rnd io.Reader, step int) ([]byte, error) {
	if len(plaintext) > MaxPlaintext {
		return nil, ErrTooLarge
	}
	block, err := k.tripleDES()
	if err != nil {
		return nil, err
	}
	pad := des.BlockSize - len(plaintext)%des.BlockSize
	ctLen := len(plaintext) + pad
	out := make([]byte, headerLen+ivLen+ctLen, headerLen+ivLen+ctLen+tagLen)
	out[0], out[1] = Version, TypeRecord
	binary.BigEndian.PutUint32(out[2:6], epoch)
	binary.BigEndian.PutUint64(out[6:14], counter)
	iv := out[headerLen : headerLen+ivLen]
	if _, err := io.ReadFull(rnd, iv); err != nil {
		return nil, fmt.Errorf("record IV: %w", err)
	}
	body := out[headerLen+ivLen:]
	copy(body, plaintext)
	for i := len(plaintext); i < ctLen; i++ {
		body[i] = byte(pad)
	}
	cbc := cipher.NewCBCEncrypter(block, iv)
	for step > 0 && len(body) > step {
		cbc.CryptBlocks(body[:step], body[:step])
		body = body[step:]
		runtime.Gosched()
	}
	cbc.CryptBlocks(body, body)
	mac := hmac.New(sha256.New, k.MAC[:])
	mac.Write(out)
	return mac.Sum(out), nil
}

// ParseHeader reads a record's header without authenticating it; callers
// use it only to pick keys, then Open authenticates everything.
func ParseHeader(record []byte) (Header, error) {
	if len(record) < MinRecordLen || (len(record)-Overhead)%des.BlockSize != 0 {
		return Header{}, ErrShortRecord
	}
	h := Header{Version: record[0], Type: record[1],
		Epoch: binary.BigEndian.Uint32(record[2:6]), Counter: binary.BigEndian.Uint64(record[6:14])}
	if h.Version != Version || h.Type != TypeRecord {
		return h, ErrVersion
	}
	return h, nil
}

// Open checks a record's tag in constant time and only then decrypts it.
func Open(k *Keys, record []byte) (Header, []byte, error) {
	h, err := ParseHeader(record)
	if err != nil {
		return h, nil, err
	}
	body, tag := record[:len(record)-tagLen], record[len(record)-tagLen:]
	mac := hmac.New(sha256.New, k.MAC[:])
	mac.Write(body)
	if subtle.ConstantTimeCompare(mac.Sum(nil), tag) != 1 {
		return h, nil, ErrBadMAC
	}
	block, err := k.tripleDES()
	if err != nil {
		return h, nil, err
	}
	iv := body[headerLen : headerLen+ivLen]
	pt := make([]byte, len(body)-headerLen-ivLen)
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(pt, body[headerLen+ivLen:])
	// The MAC already vouched for the bytes, so a padding error here means
	// a sender bug, not an oracle for an attacker.
	pt, err = unpad(pt)
	return h, pt, err
}

// ReplayWindow accepts each counter once and rejects counters more than
// WindowSize below the highest seen (RFC 4303 §3.4.3 style).
type ReplayWindow struct {
	highest uint64
	seen    [WindowSize / 64]uint64
	started bool
}

// WindowSize is how far out of order a record may arrive.
const WindowSize = 256

// Check reports whether counter is acceptable without recording it.
func (w *ReplayWindow) Check(counter uint64) error {
	if !w.started || counter > w.highest {
		return nil
	}
	if w.highest-counter >= WindowSize {
		return ErrReplay
	}
	off := w.highest - counter
	if w.seen[off/64]&(1<<(off%64)) != 0 {
		return ErrReplay
	}
	return nil
}

// Accept records counter as seen; call it only after Open succeeded.
func (w *ReplayWindow) Accept(counter uint64) {
	if !w.started {
		w.started, w.highest = true, counter
		w.seen[0] = 1
		return
	}
	if counter > w.highest {
		shift := counter - w.highest
		w.shift(shift)
		w.highest = counter
		w.seen[0] |= 1
		return
	}
	off := w.highest - counter
	w.seen[off/64] |= 1 << (off % 64)
}

// shift moves the bitmap so bit 0 stands for a counter n higher.
func (w *ReplayWindow) shift(n uint64) {
	if n >= WindowSize {
		w.seen = [WindowSize / 64]uint64{}
		return
	}
	words, bits := int(n/64), uint(n%64)
	var out [WindowSize / 64]uint64
	for i := len(out) - 1; i >= 0; i-- {
		src := i - words
		if src < 0 {
			continue
		}
		out[i] = w.seen[src] << bits
		if bits > 0 && src > 0 {
			out[i] |= w.seen[src-1] >> (64 - bits)
		}
	}
	w.seen = out
}
