package store

import (
	"strings"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
)

// readCache keeps what the state machine's readers last read from badger,
// by key, so that the hot reads of every call — an account, its directory
// entry, whether a session was logged out, which accounts a name finds —
// skip badger's transactions, memtables and tables (a fifth of a
// coordinator's CPU under lookups).
//
// It never serves a value older than the state a reader waited for. The
// state machine is badger's only writer: after each commit it drops the
// keys that commit wrote, before it publishes the new applied index or any
// event. A reader that missed stores what it read only if no commit ended
// since it began reading: begin returns a generation that every drop
// advances, and put compares it under the lock the drop holds, so a value
// read before a commit cannot be stored after that commit's drop.
type readCache struct {
	mu  sync.Mutex
	gen atomic.Uint64
	// values maps a badger key to cachedValue; finds maps a lower-cased
	// FindAccounts query to its sorted login ids. Both are replaced whole
	// to drop many entries at once.
	values atomic.Pointer[cacheMap]
	finds  atomic.Pointer[cacheMap]
}

// cacheMap is one generation of entries with its size.
type cacheMap struct {
	m     sync.Map
	count atomic.Int64
}

// cachedValue is a key's value as badger held it; found is false for a key
// badger did not have.
type cachedValue struct {
	val   []byte
	found bool
}

// maxCacheEntries bounds each map; a full map starts again empty.
const maxCacheEntries = 1 << 17

func newReadCache() *readCache {
	c := &readCache{}
	c.values.Store(&cacheMap{})
	c.finds.Store(&cacheMap{})
	return c
}

// begin is called before reading badger; its result goes to put.
func (c *readCache) begin() uint64 { return c.gen.Load() }

func (c *readCache) value(key string) (cachedValue, bool) {
	v, ok := c.values.Load().m.Load(key)
	if !ok {
		return cachedValue{}, false
	}
	return v.(cachedValue), true
}

func (c *readCache) putValue(gen uint64, key string, v cachedValue) {
	c.put(gen, &c.values, key, v)
}

func (c *readCache) find(query string) ([]string, bool) {
	v, ok := c.finds.Load().m.Load(query)
	if !ok {
		return nil, false
	}
	return v.([]string), true
}

func (c *readCache) putFind(gen uint64, query string, logins []string) {
	c.put(gen, &c.finds, query, logins)
}

func (c *readCache) put(gen uint64, to *atomic.Pointer[cacheMap], key string, v any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen.Load() != gen {
		return // a commit ended while this was read: it may be stale
	}
	cm := to.Load()
	if cm.count.Load() >= maxCacheEntries {
		cm = &cacheMap{}
		to.Store(cm)
	}
	if _, loaded := cm.m.Swap(key, v); !loaded {
		cm.count.Add(1)
	}
}

// drop forgets the keys a commit wrote, and every cached FindAccounts
// answer when an account or a name index changed.
func (c *readCache) drop(keys []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen.Add(1)
	values := c.values.Load()
	names := false
	for _, k := range keys {
		if _, ok := values.m.LoadAndDelete(k); ok {
			values.count.Add(-1)
		}
		if strings.HasPrefix(k, prefAccount) || strings.HasPrefix(k, prefUser) || strings.HasPrefix(k, prefRoll) {
			names = true
		}
	}
	if names {
		c.finds.Store(&cacheMap{})
	}
}

// clear forgets everything (after a snapshot was restored).
func (c *readCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen.Add(1)
	c.values.Store(&cacheMap{})
	c.finds.Store(&cacheMap{})
}

// writeTxn is the state machine's write transaction: it records the keys it
// sets and deletes, for readCache.drop once it has committed.
type writeTxn struct {
	*badger.Txn
	written []string
}

func (w *writeTxn) Set(key, val []byte) error {
	w.written = append(w.written, string(key))
	return w.Txn.Set(key, val)
}

func (w *writeTxn) Delete(key []byte) error {
	w.written = append(w.written, string(key))
	return w.Txn.Delete(key)
}
