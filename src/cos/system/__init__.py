"""The running or image system: features (`cos init`), layout (`cos mount`), state.yaml."""
