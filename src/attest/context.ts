/**
 * What verifiers remember between calls: verified chains, checked CRLs and collateral, parsed trust
 * anchors. All of it depends on the time, the trust anchors or the collateral a caller used, so it lives
 * in a context the caller owns instead of in module globals: two callers with different trust anchors
 * (or two tests) cannot see each other's entries, and dropping a context forgets everything in it.
 *
 * Each verifier module keeps its own state in a slot of the context, made on first use, so this file
 * knows nothing of the verifiers and imports nothing. Callers that pass no context share
 * `defaultVerifierContext`, which is what makes repeated verification of one platform cheap.
 */

/**
 * A verifier module's key to its state in every context (the object's identity is the key); `create`
 * makes a fresh, empty state.
 */
export interface ContextSlot<T> {
  create(): T;
}

export class VerifierContext {
  private readonly states = new Map<ContextSlot<unknown>, unknown>();

  /** The state `slot` names in this context, made on first use. */
  state<T>(slot: ContextSlot<T>): T {
    let s = this.states.get(slot) as T | undefined;
    if (s === undefined) {
      s = slot.create();
      this.states.set(slot, s);
    }
    return s;
  }
}

/** A fresh context: nothing verified, parsed or fetched by any other context is remembered in it. */
export function createVerifierContext(): VerifierContext {
  return new VerifierContext();
}

/** The context of callers that pass none (the shipped verifiers, `createDefaultRegistry()`). */
export const defaultVerifierContext: VerifierContext = createVerifierContext();

/** `options.context`, or the default context when the caller gave none. */
export function contextOf(options: { context?: VerifierContext | undefined }): VerifierContext {
  return options.context ?? defaultVerifierContext;
}
