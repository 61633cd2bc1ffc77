// Package desktop will be the Fyne desktop app's main package (DESIGN.md
// §4), with one file per screen under desktop/ui. What it will show already
// exists: the client engine under desktop/engine (no GUI import) and the
// headless client under desktop/cli, both faces over the same engine.
package desktop
