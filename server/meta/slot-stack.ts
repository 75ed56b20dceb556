// The reusable slots as a stack kept in pages of a fixed size, every page full but the last. One
// array of every free slot had to grow as a whole: after a 4 GiB delete, a push that outgrew its
// backing store (~2M entries) copied it, 40-90 ms on this machine's event loop, the longest stall
// reads on another volume saw in the delete benchmark. Pages never copy more than one page, and a
// page is also what the free list stores per record (see SlotAllocator): a commit copies a changed page whole.

export class SlotStack {
  private readonly pages: number[][] = [];
  private top: number[] = [];
  private size = 0;

  constructor(private readonly pageSize: number) {
    this.pages.push(this.top);
  }

  get length(): number {
    return this.size;
  }

  push(slot: number): void {
    if (this.top.length === this.pageSize) this.pages.push((this.top = []));
    this.top.push(slot);
    this.size++;
  }

  pop(): number | undefined {
    if (this.size === 0) return undefined;
    if (this.top.length === 0) {
      this.pages.pop();
      this.top = this.pages[this.pages.length - 1];
    }
    this.size--;
    return this.top.pop();
  }

  /** A copy of the slots at positions [k * pageSize, (k + 1) * pageSize). */
  page(k: number): number[] {
    return this.pages[k] ? this.pages[k].slice() : [];
  }

  clear(): void {
    this.pages.length = 0;
    this.pages.push((this.top = []));
    this.size = 0;
  }
}
