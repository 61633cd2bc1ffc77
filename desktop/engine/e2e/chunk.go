package e2e

import (
	"crypto/cipher"
	"crypto/des"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
)

// File chunks (DESIGN.md §5 "Files"): a random 32-byte file key; chunk i is
// one record sealed under ChunkKeys(fileKey, i) with i as its counter, so
// chunks are independent: they seal on all cores at once, resume one by
// one, and one sealed copy serves every member of a group.

// FileKeyLen is the length of a file key.
const FileKeyLen = 32

// ErrChunkIndex is a chunk presented under another index than its own.
var ErrChunkIndex = errors.New("chunk carries another index than the one asked for")

// NewFileKey draws a random file key.
func NewFileKey(rnd io.Reader) ([]byte, error) {
	k := make([]byte, FileKeyLen)
	if _, err := io.ReadFull(rnd, k); err != nil {
		return nil, fmt.Errorf("file key: %w", err)
	}
	return k, nil
}

// SealedLen is the length of the record that seals n plaintext bytes.
func SealedLen(n int) int {
	return headerLen + ivLen + (n/des.BlockSize+1)*des.BlockSize + tagLen
}

// SealChunk seals chunk i of a file.
func SealChunk(fileKey []byte, i uint64, plaintext []byte, rnd io.Reader) ([]byte, error) {
	if len(fileKey) != FileKeyLen {
		return nil, errors.New("file key must be 32 bytes")
	}
	k, err := ChunkKeys(fileKey, i)
	if err != nil {
		return nil, err
	}
	return seal(k, 0, i, plaintext, rnd, yieldStep)
}

// yieldStep is how much of a chunk is encrypted or decrypted before other
// goroutines get a turn (about a millisecond of 3DES).
const yieldStep = 32 << 10

// OpenChunk authenticates chunk i of a file and decrypts it on up to
// workers cores (0: all of them). A record sealed for another index, or
// under another file key, or changed in any bit fails before anything is
// decrypted.
func OpenChunk(fileKey []byte, i uint64, record []byte, workers int) ([]byte, error) {
	if len(fileKey) != FileKeyLen {
		return nil, errors.New("file key must be 32 bytes")
	}
	h, err := ParseHeader(record)
	if err != nil {
		return nil, err
	}
	if h.Epoch != 0 || h.Counter != i {
		return nil, ErrChunkIndex
	}
	k, err := ChunkKeys(fileKey, i)
	if err != nil {
		return nil, err
	}
	return openParallel(k, record, workers)
}

// parallelMin is the smallest ciphertext worth splitting across cores.
const parallelMin = 64 << 10

// openParallel is Open with CBC decryption split across cores. CBC
// decrypts each block on its own (P_j = D(C_j) xor C_{j-1}), so segment s
// of the ciphertext decrypts with the last ciphertext block of segment s-1
// as its IV: the same plaintext as one sequential pass, in a fraction of
// the time (Go's 3DES has no assembly; one core opens about 20 MB/s).
func openParallel(k *Keys, record []byte, workers int) ([]byte, error) {
	if _, err := ParseHeader(record); err != nil {
		return nil, err
	}
	body, tag := record[:len(record)-tagLen], record[len(record)-tagLen:]
	mac := hmac.New(sha256.New, k.MAC[:])
	mac.Write(body)
	if subtle.ConstantTimeCompare(mac.Sum(nil), tag) != 1 {
		return nil, ErrBadMAC
	}
	block, err := k.tripleDES()
	if err != nil {
		return nil, err
	}
	iv, ct := body[headerLen:headerLen+ivLen], body[headerLen+ivLen:]
	pt := make([]byte, len(ct))
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	blocks := len(ct) / des.BlockSize
	if workers > 1 && len(ct) >= parallelMin {
		// More segments than cores: a core that another task holds does
		// not leave its whole share waiting; the idle ones take more.
		segments := max(workers, len(ct)/yieldStep)
		per := (blocks + segments - 1) / segments
		var wg sync.WaitGroup
		for start := 0; start < blocks; start += per {
			end := min(start+per, blocks)
			segIV := iv
			if start > 0 {
				segIV = ct[(start-1)*des.BlockSize : start*des.BlockSize]
			}
			wg.Add(1)
			go func(from, to int, segIV []byte) {
				defer wg.Done()
				a, b := from*des.BlockSize, to*des.BlockSize
				cipher.NewCBCDecrypter(block, segIV).CryptBlocks(pt[a:b], ct[a:b])
			}(start, end, segIV)
		}
		wg.Wait()
	} else {
		cipher.NewCBCDecrypter(block, iv).CryptBlocks(pt, ct)
	}
	return unpad(pt)
}

func unpad(pt []byte) ([]byte, error) {
	pad := int(pt[len(pt)-1])
	if pad == 0 || pad > des.BlockSize || pad > len(pt) {
		return nil, ErrPadding
	}
	for _, b := range pt[len(pt)-pad:] {
		if int(b) != pad {
			return nil, ErrPadding
		}
	}
	return pt[:len(pt)-pad], nil
}
