package store

import (
	"encoding/binary"
	"errors"
	"sort"
	"strings"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/coord/store/statepb"
)

// ErrNotFound is returned by reads of a single record that does not exist.
var ErrNotFound = errors.New("not found")

// AppliedIndex is the last Raft index whose effect badger holds.
func (f *FSM) AppliedIndex() (uint64, error) {
	var idx uint64
	err := f.db.View(func(txn *badger.Txn) error {
		var err error
		idx, err = readApplied(txn)
		return err
	})
	return idx, err
}

func readApplied(txn getter) (uint64, error) {
	item, err := txn.Get([]byte(keyApplied))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var idx uint64
	err = item.Value(func(v []byte) error {
		if len(v) != 8 {
			return errors.New("corrupt applied index")
		}
		idx = binary.BigEndian.Uint64(v)
		return nil
	})
	return idx, err
}

// ClusterInfo is the cluster identity and token key, once initialised
// (every call's token check reads it: from the read cache).
func (f *FSM) ClusterInfo() (*statepb.InitCluster, error) {
	var c statepb.InitCluster
	if err := f.get(keyCluster, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// Account returns one account by login id.
func (f *FSM) Account(login string) (*statepb.Account, error) {
	var a statepb.Account
	return &a, f.get(prefAccount+login, &a)
}

// FindAccounts returns the login ids that query names: an exact login id, a
// username, or a roll number (which may name several accounts).
func (f *FSM) FindAccounts(query string) ([]string, error) {
	q := strings.ToLower(query)
	if logins, ok := f.cache.find(q); ok {
		return append([]string(nil), logins...), nil
	}
	gen := f.cache.begin()
	logins, err := f.findAccounts(q)
	if err != nil {
		return nil, err
	}
	f.cache.putFind(gen, q, logins)
	return append([]string(nil), logins...), nil
}

// maxFound bounds FindAccounts: a roll number many people share lists
// the first of them, not all.
const maxFound = 100

// findAccounts is FindAccounts from badger, for a lower-cased query.
func (f *FSM) findAccounts(q string) ([]string, error) {
	found := map[string]bool{}
	err := f.db.View(func(txn *badger.Txn) error {
		if ok, err := has(txn, prefAccount+q); err != nil {
			return err
		} else if ok {
			found[q] = true
		}
		if item, err := txn.Get([]byte(prefUser + q)); err == nil {
			login, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			found[string(login)] = true
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		prefix := []byte(prefRoll + q + "/")
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid() && len(found) < maxFound; it.Next() {
			found[string(it.Item().Key()[len(prefix):])] = true
		}
		return nil
	})
	return sortedKeys(found), err
}

// Keys returns an account's directory entry; ErrNotFound if it has not
// published keys yet.
func (f *FSM) Keys(login string) (*api.Keys, error) {
	var k api.Keys
	return &k, f.get(prefKeys+login, &k)
}

// Groups lists a page of groups in (folded) name order: at most limit
// after the page token after; next is the following page's token, "" on
// the last page.
func (f *FSM) Groups(after string, limit int) ([]*statepb.Group, string, error) {
	var out []*statepb.Group
	next := ""
	err := f.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefGroup), PrefetchValues: true})
		defer it.Close()
		for it.Seek(pageStart(prefGroup, after)); it.Valid(); it.Next() {
			if len(out) == limit {
				next = FoldGroupName(out[len(out)-1].Name)
				return nil
			}
			g := &statepb.Group{}
			if err := it.Item().Value(func(v []byte) error { return proto.Unmarshal(v, g) }); err != nil {
				return err
			}
			out = append(out, g)
		}
		return nil
	})
	return out, next, err
}

// pageStart is the first key of a page that follows the key prefix+after.
func pageStart(prefix, after string) []byte {
	if after == "" {
		return []byte(prefix)
	}
	return []byte(prefix + after + "\x00")
}

// Group returns one group by name, case-insensitively.
func (f *FSM) Group(name string) (*statepb.Group, error) {
	var g statepb.Group
	return &g, f.get(prefGroup+FoldGroupName(name), &g)
}

// MyGroups lists a page of the groups login is a member of, as Groups.
func (f *FSM) MyGroups(login, after string, limit int) ([]*statepb.Group, string, error) {
	var names []string
	next := ""
	err := f.db.View(func(txn *badger.Txn) error {
		prefix := prefMyGroup + login + "/"
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix)})
		defer it.Close()
		for it.Seek(pageStart(prefix, after)); it.Valid(); it.Next() {
			if len(names) == limit {
				next = names[len(names)-1]
				return nil
			}
			names = append(names, string(it.Item().Key()[len(prefix):]))
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	out := make([]*statepb.Group, 0, len(names))
	for _, n := range names {
		g, err := f.Group(n)
		if err != nil {
			return nil, "", err
		}
		out = append(out, g)
	}
	return out, next, nil
}

// Members lists a group's members' login ids; ErrNotFound for no group.
func (f *FSM) Members(name string) (*statepb.Group, []string, error) {
	g, err := f.Group(name)
	if err != nil {
		return nil, nil, err
	}
	var members []string
	err = f.db.View(func(txn *badger.Txn) error {
		prefix := []byte(prefGMember + FoldGroupName(name) + "/")
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			members = append(members, string(it.Item().Key()[len(prefix):]))
		}
		return nil
	})
	return g, members, err
}

// Mail returns up to limit envelopes for login with seq > after, in order,
// and no more than maxBytes of them (but always at least one).
func (f *FSM) Mail(login string, after uint64, limit, maxBytes int) ([]*api.Mail, error) {
	var out []*api.Mail
	size := 0
	err := f.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefMail + login + "/"), PrefetchValues: true})
		defer it.Close()
		for it.Seek([]byte(mailKey(login, after+1))); it.Valid() && len(out) < limit; it.Next() {
			m := &api.Mail{}
			if err := it.Item().Value(func(v []byte) error { return proto.Unmarshal(v, m) }); err != nil {
				return err
			}
			// One answer carries what fits in a gRPC message; the first
			// envelope always goes (envelopes are smaller than that).
			if size += proto.Size(m); len(out) > 0 && size > maxBytes {
				break
			}
			out = append(out, m)
		}
		return nil
	})
	return out, err
}

// Revoked reports whether a session was logged out.
func (f *FSM) Revoked(sessionID []byte) (bool, error) {
	v, err := f.read(prefRevoked + string(sessionID))
	return v.found, err
}

// Nodes lists the registered coordinators.
func (f *FSM) Nodes() ([]*statepb.Node, error) {
	var out []*statepb.Node
	err := f.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefNode), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n := &statepb.Node{}
			if err := it.Item().Value(func(v []byte) error { return proto.Unmarshal(v, n) }); err != nil {
				return err
			}
			out = append(out, n)
		}
		return nil
	})
	return out, err
}

// Node is one registered coordinator.
func (f *FSM) Node(id string) (*statepb.Node, error) {
	var n statepb.Node
	if err := f.get(prefNode+id, &n); err != nil {
		return nil, err
	}
	return &n, nil
}

// MailboxSize is the number of envelopes and bytes waiting for login.
func (f *FSM) MailboxSize(login string) (*statepb.MailBox, error) {
	var b statepb.MailBox
	err := f.get(prefMailbox+login, &b)
	if errors.Is(err, ErrNotFound) {
		err = nil
	}
	return &b, err
}

// get reads key's value into m; ErrNotFound if there is none.
func (f *FSM) get(key string, m proto.Message) error {
	v, err := f.read(key)
	if err != nil {
		return err
	}
	if !v.found {
		return ErrNotFound
	}
	return proto.Unmarshal(v.val, m)
}

// read is key's value from the read cache, or else from badger (and then
// cached). The cached bytes are shared: callers must not change them
// (proto.Unmarshal copies what it keeps).
func (f *FSM) read(key string) (cachedValue, error) {
	if v, ok := f.cache.value(key); ok {
		return v, nil
	}
	gen := f.cache.begin()
	var v cachedValue
	err := f.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(key))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		v.found = true
		v.val, err = item.ValueCopy(nil)
		return err
	})
	if err != nil {
		return cachedValue{}, err
	}
	f.cache.putValue(gen, key, v)
	return v, nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// PeerPublished says whether a libp2p peer id is the device some account
// published in the directory (the relays admit only those).
func (f *FSM) PeerPublished(peerID string) bool {
	v, err := f.read(prefPeer + peerID)
	return err == nil && v.found
}
