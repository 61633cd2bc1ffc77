// Package assets owns the files the apps embed: the icon now; fonts and
// images as the desktop app grows. Fyne-facing code wraps them as
// resources; nothing here imports Fyne.
package assets

import _ "embed"

// Icon is the application icon, a 256×256 PNG.
//
//go:embed icon.png
var Icon []byte
