package ledger.peer;

import java.util.Map;
import org.apache.kafka.streams.state.RocksDBConfigSetter;
import org.rocksdb.BlockBasedTableConfig;
import org.rocksdb.Cache;
import org.rocksdb.LRUCache;
import org.rocksdb.Options;
import org.rocksdb.WriteBufferManager;

/**
 * Bounds RocksDB's off-heap memory across all of the instance's stores (the recipe of
 * the Kafka Streams memory management docs): one LRU block cache shared by every store,
 * with memtables and index/filter blocks charged to it. Without it each store (and each
 * segment of a window store) gets its own 50 MiB cache and 3 x 16 MiB memtables.
 */
public final class BoundedMemoryRocksDBConfig implements RocksDBConfigSetter {
    static final long TOTAL_OFF_HEAP_BYTES = Long.getLong("peer.rocksdb.offheap.bytes", 256L * 1024 * 1024);
    static final long TOTAL_MEMTABLE_BYTES = Long.getLong("peer.rocksdb.memtable.bytes", 64L * 1024 * 1024);
    static final double INDEX_FILTER_BLOCK_RATIO = 0.1;

    private static final Cache CACHE = new LRUCache(TOTAL_OFF_HEAP_BYTES, -1, false, INDEX_FILTER_BLOCK_RATIO);
    private static final WriteBufferManager WRITE_BUFFERS = new WriteBufferManager(TOTAL_MEMTABLE_BYTES, CACHE);

    @Override
    public void setConfig(String storeName, Options options, Map<String, Object> configs) {
        BlockBasedTableConfig table = (BlockBasedTableConfig) options.tableFormatConfig();
        table.setBlockCache(CACHE);
        table.setCacheIndexAndFilterBlocks(true);
        table.setCacheIndexAndFilterBlocksWithHighPriority(true);
        table.setPinTopLevelIndexAndFilter(true);
        options.setWriteBufferManager(WRITE_BUFFERS);
        options.setTableFormatConfig(table);
    }

    @Override
    public void close(String storeName, Options options) {
        // The cache and write buffer manager are shared by every store: never closed here.
    }
}
