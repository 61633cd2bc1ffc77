// Package downloads owns the folder received files land in: it turns the
// name a peer chose into a safe one, keeps a file being received under a
// temporary name with its space reserved, and gives it its final name only
// when it is complete, never overwriting anything and never writing outside
// the folder.
package downloads

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// MaxNameBytes is the longest file name most file systems take.
const MaxNameBytes = 255

// ErrNoSpace is a file larger than the free space of the folder.
var ErrNoSpace = errors.New("not enough free space")

// reserved are names Windows gives to devices (with any extension): a file
// so named cannot be opened there, and a name that is harmless here may be
// copied there later.
var reserved = map[string]bool{"CON": true, "PRN": true, "AUX": true, "NUL": true,
	"COM1": true, "COM2": true, "COM3": true, "COM4": true, "COM5": true, "COM6": true, "COM7": true, "COM8": true, "COM9": true,
	"LPT1": true, "LPT2": true, "LPT3": true, "LPT4": true, "LPT5": true, "LPT6": true, "LPT7": true, "LPT8": true, "LPT9": true}

// SanitizeName turns the name a peer gave a file into one that is safe to
// create in the downloads folder: only its last path element, valid UTF-8
// without control characters or characters that other systems refuse, not
// a reserved device name, not "." or "..", not hidden, and at most
// MaxNameBytes bytes (keeping the extension).
func SanitizeName(name string) string {
	name = strings.ToValidUTF8(name, "_")
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.Map(func(r rune) rune {
		switch {
		case unicode.IsControl(r), r == unicode.ReplacementChar:
			return '_'
		case strings.ContainsRune(`<>:"|?*`, r):
			return '_'
		case unicode.Is(unicode.Cf, r): // bidi overrides that disguise extensions
			return '_'
		}
		return r
	}, name)
	// Trailing dots and spaces vanish on Windows; leading ones hide the
	// file or make "..".
	name = strings.Trim(name, ". ")
	if name == "" {
		name = "file"
	}
	// Windows reserves a device name whatever follows its first dot.
	first, _, _ := strings.Cut(name, ".")
	if reserved[strings.ToUpper(strings.TrimRight(first, " "))] {
		name = "_" + name
	}
	stem, ext := splitExt(name)
	// Cutting a long name can leave it ending in spaces or dots again.
	return strings.TrimRight(truncate(stem, ext, MaxNameBytes), ". ")
}

// splitExt splits "a.tar.gz" into "a.tar" and ".gz"; a name that is all
// extension (".bashrc" after trimming cannot occur) keeps it as stem.
func splitExt(name string) (string, string) {
	ext := filepath.Ext(name)
	if ext == name || len(ext) > 32 {
		return name, ""
	}
	return name[:len(name)-len(ext)], ext
}

// truncate shortens stem so that stem+ext fits max bytes, at a rune
// boundary.
func truncate(stem, ext string, max int) string {
	if len(stem)+len(ext) <= max {
		return stem + ext
	}
	room := max - len(ext)
	for room > 0 && !utf8.RuneStart(stem[room]) {
		room--
	}
	return stem[:room] + ext
}

// Folder is a downloads folder.
type Folder struct {
	dir string
}

// Open makes (if needed) and opens the downloads folder.
func Open(dir string) (*Folder, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("downloads folder %s: %w", abs, err)
	}
	return &Folder{dir: abs}, nil
}

// Dir is the folder's absolute path.
func (f *Folder) Dir() string { return f.dir }

// Free is how many bytes the folder's file system has for this user.
func (f *Folder) Free() (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(f.dir, &st); err != nil {
		return 0, fmt.Errorf("free space in %s: %w", f.dir, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// partialName is the temporary name of a file being received: hidden, and
// named after a local key (never after anything a peer chose).
func (f *Folder) partialName(key string) (string, error) {
	for _, c := range key {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", fmt.Errorf("partial file key %q is not hex", key)
		}
	}
	if key == "" || len(key) > 128 {
		return "", errors.New("bad partial file key")
	}
	return filepath.Join(f.dir, ".e2em-"+key+".part"), nil
}

// CreatePartial makes the temporary file for a transfer and reserves size
// bytes for it, so that a disk too small is found before anything is
// fetched. It refuses with ErrNoSpace when the space is not there.
func (f *Folder) CreatePartial(key string, size int64) (*os.File, error) {
	path, err := f.partialName(key)
	if err != nil {
		return nil, err
	}
	free, err := f.Free()
	if err == nil && uint64(size) > free {
		return nil, fmt.Errorf("%w: %s needed, %s free in %s", ErrNoSpace, HumanBytes(size), HumanBytes(int64(free)), f.dir)
	}
	// O_EXCL|O_NOFOLLOW: never through a link someone left under this name.
	file, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if errors.Is(err, fs.ErrExist) {
		os.Remove(path) // a leftover of a transfer forgotten since
		file, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	if size > 0 {
		err := unix.Fallocate(int(file.Fd()), 0, 0, size)
		if errors.Is(err, unix.ENOSPC) {
			file.Close()
			os.Remove(path)
			return nil, fmt.Errorf("%w: %s needed in %s", ErrNoSpace, HumanBytes(size), f.dir)
		}
		if err != nil && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
			file.Close()
			os.Remove(path)
			return nil, fmt.Errorf("reserve %s for %s: %w", HumanBytes(size), path, err)
		}
	}
	return file, nil
}

// OpenPartial opens the temporary file of a transfer again (after a
// restart).
func (f *Folder) OpenPartial(key string) (*os.File, error) {
	path, err := f.partialName(key)
	if err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW, 0)
}

// RemovePartial deletes the temporary file of a transfer, if any.
func (f *Folder) RemovePartial(key string) error {
	path, err := f.partialName(key)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Finish gives the complete file of a transfer its name: the sanitized
// name, or "name (1).ext", "name (2).ext", … when that exists. It never
// replaces a file. It returns the final path.
func (f *Folder) Finish(key, name string) (string, error) {
	from, err := f.partialName(key)
	if err != nil {
		return "", err
	}
	stem, ext := splitExt(SanitizeName(name))
	for n := 0; n < 10000; n++ {
		candidate := stem + ext
		if n > 0 {
			suffix := fmt.Sprintf(" (%d)", n)
			candidate = truncate(stem, suffix+ext, MaxNameBytes)
		}
		to := filepath.Join(f.dir, candidate)
		if filepath.Dir(to) != f.dir {
			return "", fmt.Errorf("refusing to write outside %s", f.dir)
		}
		err := renameNoReplace(from, to)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("save %s: %w", to, err)
		}
		return to, nil
	}
	return "", fmt.Errorf("no free name for %s in %s", name, f.dir)
}

// renameNoReplace renames from to to unless to exists (renameat2 with
// RENAME_NOREPLACE; a hard link and unlink where the file system has no
// renameat2).
func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EEXIST) {
		return fs.ErrExist
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		return err
	}
	if err := os.Link(from, to); err != nil {
		return err
	}
	return os.Remove(from)
}

// HumanBytes writes a size the way people read it: 20.0 MB, 512 B.
func HumanBytes(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}
