/**
 * Bounds on the policy input, so that evaluation cost (compile.ts, estimateCost) stays bounded
 * whatever the evidence says. Inputs over them are denied with a reason.
 */
export const INPUT_LIMITS = Object.freeze({
  maxSubmods: 16,
  /** JSON values in all claims, reasons (4 per reason) and init data together. */
  maxValues: 4096,
  maxDepth: 16,
  maxStringLength: 65_536,
  /**
   * Characters of all strings in claims, reasons and init data together, map keys included, and of
   * the submodules' names, statuses and kinds: with maxValues, it bounds what all the walks over the
   * input together can cost (cost.ts), each copy of a string counted.
   */
  maxStringChars: 262_144,
  /**
   * Training receipts in `receipts` (the newest the key broker recorded for the resource), outputs of
   * one receipt, and characters of one string of a receipt (job, digests, names, kinds): receipts have
   * bounds of their own rather than a share of the budgets above, so a receipt cannot crowd out claims.
   */
  maxReceipts: 16,
  maxReceiptOutputs: 16,
  maxReceiptString: 256,
});
