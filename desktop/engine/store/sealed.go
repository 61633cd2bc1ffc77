package store

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// A sealed profile keeps its database encrypted at rest (issue 12, point
// 16): <profile>/db is badger with encryption on, under a key derived
// from the person's password with argon2id and a random salt kept in
// <profile>/profile-key.json. Without the password the folder shows
// nothing but sizes and times. The log-in secret the cluster sees is a
// different derivation (api.AuthSecret), so it opens nothing here.
const (
	keyFile  = "profile-key.json"
	dbFolder = "db"
	lockFile = "profile.lock"
)

// ErrOldProfile refuses a profile written before encryption at rest.
var ErrOldProfile = errors.New("this profile was made by an older e2em that kept history unencrypted; move the folder away (or start with another -profile) and log in again")

// ProfileLock is a process's claim on a profile folder.
type ProfileLock struct{ f *os.File }

// Lock claims the profile folder (made 0700 if new) for this process;
// ErrInUse when another process holds it.
func Lock(dir string) (*ProfileLock, error) {
	if err := privateDir(dir); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock profile: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrInUse
		}
		return nil, fmt.Errorf("lock profile: %w", err)
	}
	return &ProfileLock{f: f}, nil
}

// Release lets another process open the profile.
func (l *ProfileLock) Release() { l.f.Close() }

// Sealed reports whether dir holds a sealed profile already.
func Sealed(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, keyFile))
	return err == nil
}

// OpenSealed opens the sealed profile in dir under password, creating it
// when there is none; ErrWrongPassword when the password does not open it.
func OpenSealed(dir, password string) (*Store, error) {
	if err := privateDir(dir); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, "MANIFEST")); err == nil {
		return nil, ErrOldProfile
	}
	pk, err := readOrMakeKey(dir)
	if err != nil {
		return nil, err
	}
	key, err := databaseKey(pk, password)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	return openDB(dir, filepath.Join(dir, dbFolder), key)
}

func readOrMakeKey(dir string) (*passwordKey, error) {
	path := filepath.Join(dir, keyFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		pk := newPasswordKey()
		b, _ := json.Marshal(&pk)
		tmp := path + ".new"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			return nil, fmt.Errorf("write the profile key: %w", err)
		}
		return &pk, os.Rename(tmp, path)
	}
	if err != nil {
		return nil, fmt.Errorf("read the profile key: %w", err)
	}
	var pk passwordKey
	if err := json.Unmarshal(b, &pk); err != nil || !pk.valid() {
		return nil, errors.New("damaged profile: its key file")
	}
	return &pk, nil
}

// databaseKey is badger's AES-256 key: the password's argon2id key, through
// HKDF with the database's own label.
func databaseKey(pk *passwordKey, password string) ([]byte, error) {
	master := pk.derive(password)
	defer clear(master)
	return hkdf.Key(sha256.New, master, nil, "e2em profile database v1", 32)
}

// privateDir makes dir (if new) and keeps it its owner's alone.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create profile folder: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("profile folder: %w", err)
	}
	return nil
}
