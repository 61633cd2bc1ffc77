// Package desktop will own the Fyne desktop app (see DESIGN.md §4): the
// window, one file per screen under desktop/ui, the headless client under
// desktop/cli, and the client engine under desktop/engine, which imports no
// Fyne. Until the messaging issue lands it holds only this description.
package desktop
